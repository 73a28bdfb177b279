"""Overfit: fires when the validation loss exceeds the training loss by more than ``ratio_threshold``.

AWS Debugger built-in rule, https://docs.aws.amazon.com/sagemaker/latest/dg/debugger-built-in-rules.html
(section Overfit): the ratio of the difference between the mean validation loss and the mean training loss to
the mean training loss; if it exceeds ``ratio_threshold`` for ``patience`` steps, the model is overfit.
Defaults: ``tensor_regex`` None (the ``losses`` collection), ``start_step`` 0, ``patience`` 1,
``ratio_threshold`` 0.1.

Means are taken per phase: a validation pass (consecutive EVAL steps) is compared with the training phase
(consecutive TRAIN steps) just before it, so one evaluation is made per epoch, and ``patience`` counts
consecutive validation passes over the threshold.
"""

from __future__ import annotations

from smdebug.core.modes import ModeKeys

from .base import EvidenceRule, loss_tensor_names, phase_mean, phases


class Overfit(EvidenceRule):
    """See the module docstring. ``ratio = (mean_validation - mean_train) / mean_train``."""

    def __init__(self, base_trial, tensor_regex=None, start_step: int = 0, patience: int = 1, ratio_threshold=0.1):
        parameters = {
            "tensor_regex": tensor_regex,
            "start_step": int(start_step),
            "patience": int(patience),
            "ratio_threshold": float(ratio_threshold),
        }
        super().__init__(base_trial, parameters)
        self.start_step = int(start_step)
        self.patience = max(int(patience), 1)
        self.ratio_threshold = float(ratio_threshold)
        self.losses = loss_tensor_names(base_trial, tensor_regex, None, use_losses=not tensor_regex)
        # evaluation points: last step of each EVAL phase -> (tensor, train phase, eval phase)
        self.checks: dict[int, list] = {}
        for name in self.losses:
            previous_train = None
            for phase in phases(base_trial, name):
                if phase.mode == ModeKeys.TRAIN:
                    previous_train = phase
                elif phase.mode == ModeKeys.EVAL and previous_train and phase.steps[-1] >= self.start_step:
                    self.checks.setdefault(phase.steps[-1], []).append((name, previous_train, phase))
        self.over = {name: 0 for name in self.losses}
        self.not_applicable_reason = (
            "no loss tensors were saved" if not self.losses else "no validation (EVAL) losses after a training phase"
        )

    def invoke_at_step(self, step):
        fired = False
        for name, train_phase, eval_phase in self.checks.get(step, []):
            train = phase_mean(self.base_trial, name, train_phase)
            validation = phase_mean(self.base_trial, name, eval_phase)
            if not train or train != train or validation != validation:
                continue
            ratio = (validation - train) / abs(train)
            self.checked += 1
            evidence = dict(
                self.describe(step),
                tensor=name,
                value=ratio,
                threshold=self.ratio_threshold,
                validation_loss=validation,
                train_loss=train,
                train_steps=[train_phase.steps[0], train_phase.steps[-1]],
            )
            if ratio > self.ratio_threshold:
                self.over[name] += 1
                if self.over[name] >= self.patience:
                    self.found(**evidence, consecutive=self.over[name])
                    fired = True
                    continue
            else:
                self.over[name] = 0
            self.observe(self.ratio_threshold - ratio, **evidence)
        return fired
