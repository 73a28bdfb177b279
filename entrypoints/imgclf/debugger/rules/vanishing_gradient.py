"""VanishingGradient: fires when the mean absolute value of a gradient tensor drops below ``threshold``.

AWS Debugger built-in rule, https://docs.aws.amazon.com/sagemaker/latest/dg/debugger-built-in-rules.html
(section VanishingGradient): "If the mean of the absolute values of the gradients drops below a specified
threshold, the rule returns True". Default ``threshold`` 0.0000001.
"""

from __future__ import annotations

from .base import EvidenceRule

GRADIENT_REGEX = "^gradient/"


class VanishingGradient(EvidenceRule):
    """Check every saved gradient tensor at every saved step: ``mean(|g|) < threshold`` is a violation.

    Gradients come from the ``gradients`` collection (and any tensor named ``gradient/...``); the value is the
    saved ``mean`` abs-reduction, or computed from the raw tensor when that was saved instead.
    """

    def __init__(self, base_trial, threshold: float = 0.0000001):
        super().__init__(base_trial, {"threshold": float(threshold)})
        self.threshold = float(threshold)
        self.gradients = sorted(set(base_trial.tensor_names(regex=GRADIENT_REGEX)))
        self.not_applicable_reason = "no gradient tensors were saved (collection 'gradients')"

    def invoke_at_step(self, step):
        fired = False
        for name in self.gradients:
            tensor = self.base_trial.tensor(name)
            if step not in tensor.steps():
                continue
            value = float(tensor.reduction_value(step, "mean", abs=True))
            self.checked += 1
            where = self.describe(step)
            if value < self.threshold:
                self.found(**where, tensor=name, value=value, threshold=self.threshold, reduction="mean(abs)")
                fired = True
            else:
                # ratio to the threshold: the closest call is the gradient nearest to vanishing
                self.observe(value / self.threshold, **where, tensor=name, value=value, threshold=self.threshold)
        return fired
