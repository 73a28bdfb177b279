"""PoorWeightInitialization: checks the first training steps for signs of a badly scaled initialization.

AWS Debugger built-in rule, https://docs.aws.amazon.com/sagemaker/latest/dg/debugger-built-in-rules.html
(section PoorWeightInitialization): "checks the variance of activation inputs across layers, the distribution
of gradients, and the loss convergence for the initial steps". Defaults: ``activation_inputs_regex``
".*relu_input", ``threshold`` 10.0 (ratio between the largest and smallest activation-input variance across
layers), ``distribution_range`` 0.001 (smallest 5th-95th percentile spread of a gradient distribution),
``patience`` 5 (steps without a new lowest loss), ``steps`` 10 (first training steps analysed).

Verdict: a violation is (a) a variance ratio above ``threshold`` at an analysed step, or (b) a gradient
distribution narrower than ``distribution_range`` together with a loss that has not reached a new low for
``patience`` steps. Narrow gradients alone are normal in large networks (per-weight gradients of a resnet are
around 1e-4), so they count only when the loss confirms that training does not start.
Percentiles need raw gradients: our hook saves them for the first and last layers (``gradient_samples``).
"""

from __future__ import annotations

import math

import numpy as np
from smdebug.core.modes import ModeKeys
from smdebug.exceptions import SMDebugError

from .base import EvidenceRule, loss_tensor_names, matches, scalar


class PoorWeightInitialization(EvidenceRule):
    """See the module docstring."""

    def __init__(
        self,
        base_trial,
        activation_inputs_regex=(".*relu_input",),
        threshold: float = 10.0,
        distribution_range: float = 0.001,
        patience: int = 5,
        steps: int = 10,
    ):
        patterns = [activation_inputs_regex] if isinstance(activation_inputs_regex, str) else activation_inputs_regex
        parameters = {
            "activation_inputs_regex": list(patterns),
            "threshold": float(threshold),
            "distribution_range": float(distribution_range),
            "patience": int(patience),
            "steps": int(steps),
        }
        super().__init__(base_trial, parameters)
        self.threshold = float(threshold)
        self.distribution_range = float(distribution_range)
        self.patience = int(patience)
        self.steps = int(steps)
        names = base_trial.tensor_names()
        self.activations = [n for n in names if matches(n, list(patterns))]
        self.gradients = [n for n in names if n.startswith("gradient/")]
        self.losses = loss_tensor_names(base_trial)
        self.best_loss = math.inf
        self.since_best = 0
        self.narrow_gradient: dict | None = None
        self.reported_stall = False
        self.not_applicable_reason = (
            f"no training steps below {self.steps} with activation inputs ({', '.join(patterns)}), "
            "raw gradients or losses"
        )

    def invoke_at_step(self, step):
        mode, mode_step = self.base_trial.mode_modestep(step)
        if mode not in (ModeKeys.TRAIN, ModeKeys.GLOBAL) or mode_step >= self.steps:
            return False
        where = self.describe(step)
        fired = self._check_activations(step, where)
        self._check_gradients(step, where)
        fired = self._check_loss(step, where) or fired
        return fired

    def _check_activations(self, step: int, where: dict) -> bool:
        variances = {}
        for name in self.activations:
            tensor = self.base_trial.tensor(name)
            if step in tensor.steps():
                variances[name] = float(tensor.reduction_value(step, "variance"))
        if len(variances) < 2:
            return False
        self.checked += 1
        low, high = min(variances, key=variances.get), max(variances, key=variances.get)
        ratio = variances[high] / variances[low] if variances[low] > 0 else math.inf
        evidence = dict(
            where,
            check="activation_variance_ratio",
            tensor=f"{high} / {low}",
            value=ratio,
            threshold=self.threshold,
            variances=variances,
        )
        if ratio > self.threshold:
            self.found(**evidence)
            return True
        self.observe(math.log(self.threshold / ratio) if ratio > 0 else math.inf, **evidence)
        return False

    def _check_gradients(self, step: int, where: dict) -> None:
        for name in self.gradients:
            tensor = self.base_trial.tensor(name)
            if step not in tensor.steps():
                continue
            try:
                values = np.asarray(tensor.value(step), dtype=np.float64).ravel()
            except SMDebugError:
                continue  # only reductions were saved for this tensor
            if values.size < 2:
                continue
            p5, p95 = np.percentile(values, [5, 95])
            spread = float(p95 - p5)
            if spread < self.distribution_range and self.narrow_gradient is None:
                self.narrow_gradient = dict(tensor=name, spread=spread, gradient_step=step)

    def _check_loss(self, step: int, where: dict) -> bool:
        values = [v for v in (scalar(self.base_trial, name, step) for name in self.losses) if v is not None]
        if not values:
            return False
        loss = float(np.mean(values))
        if loss < self.best_loss:
            self.best_loss, self.since_best = loss, 0
        else:
            self.since_best += 1
        if self.since_best < self.patience or self.narrow_gradient is None or self.reported_stall:
            return False
        self.reported_stall = True
        self.checked += 1
        self.found(
            **where,
            check="narrow_gradients_and_loss_not_decreasing",
            tensor=self.narrow_gradient["tensor"],
            value=self.narrow_gradient["spread"],
            threshold=self.distribution_range,
            gradient_step=self.narrow_gradient["gradient_step"],
            steps_without_new_low_loss=self.since_best,
            patience=self.patience,
        )
        return True
