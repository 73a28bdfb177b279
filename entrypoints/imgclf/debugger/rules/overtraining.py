"""Overtraining: fires when the validation loss has stopped improving while the training loss still improves.

AWS Debugger built-in rule, https://docs.aws.amazon.com/sagemaker/latest/dg/debugger-built-in-rules.html
(section Overtraining). Defaults: ``patience_train`` 5 (steps before the training loss counts as no longer
improving), ``patience_validation`` 10 (same for the validation loss), ``delta`` 0.1 (how much the loss must
improve to count as a new optimum).

Steps are counted per phase: one training value per training phase (the mean loss of the epoch) and one
validation value per validation pass. ``delta`` is read as a fraction of the best loss so far (0.1 = the loss
must fall 10% below its best), because the documentation gives no unit and an absolute 0.1 would mean
different things for different losses. The rule fires at a validation pass when the validation loss has not
reached a new optimum for ``patience_validation`` passes while the training loss reached one within the last
``patience_train`` training phases.
"""

from __future__ import annotations

import math

from smdebug.core.modes import ModeKeys

from .base import EvidenceRule, loss_tensor_names, phase_mean, phases


class _Tracker:
    """Best value so far and how many evaluations ago it was reached (new optimum: below best * (1 - delta))."""

    def __init__(self, delta: float):
        self.delta = delta
        self.best = math.inf
        self.best_step: int | None = None
        self.since = 0

    def update(self, value: float, step: int) -> None:
        if value < self.best * (1.0 - self.delta) or self.best == math.inf:
            self.best, self.best_step, self.since = value, step, 0
        else:
            self.since += 1


class Overtraining(EvidenceRule):
    """See the module docstring."""

    def __init__(self, base_trial, patience_train: int = 5, patience_validation: int = 10, delta: float = 0.1):
        parameters = {
            "patience_train": int(patience_train),
            "patience_validation": int(patience_validation),
            "delta": float(delta),
        }
        super().__init__(base_trial, parameters)
        self.patience_train = int(patience_train)
        self.patience_validation = int(patience_validation)
        self.delta = float(delta)
        self.losses = loss_tensor_names(base_trial)
        self.ends: dict[int, list] = {}  # last step of a phase -> [(tensor, phase)]
        has_eval = False
        for name in self.losses:
            for phase in phases(base_trial, name):
                if phase.mode in (ModeKeys.TRAIN, ModeKeys.EVAL):
                    self.ends.setdefault(phase.steps[-1], []).append((name, phase))
                    has_eval = has_eval or phase.mode == ModeKeys.EVAL
        self.train = {name: _Tracker(self.delta) for name in self.losses}
        self.validation = {name: _Tracker(self.delta) for name in self.losses}
        self.not_applicable_reason = "no loss tensors were saved" if not self.losses else "no validation losses"
        if self.losses and not has_eval:
            self.ends = {}

    def invoke_at_step(self, step):
        fired = False
        for name, phase in self.ends.get(step, []):
            value = phase_mean(self.base_trial, name, phase)
            if value != value:
                continue
            if phase.mode == ModeKeys.TRAIN:
                self.train[name].update(value, step)
                continue
            validation, train = self.validation[name], self.train[name]
            validation.update(value, step)
            self.checked += 1
            evidence = dict(
                self.describe(step),
                tensor=name,
                value=value,
                threshold=self.patience_validation,
                validation_passes_without_improvement=validation.since,
                best_validation_loss=validation.best,
                best_validation_step=validation.best_step,
                training_phases_since_train_optimum=train.since,
                best_train_loss=train.best,
            )
            if validation.since >= self.patience_validation and train.since < self.patience_train:
                self.found(**evidence)
                fired = True
            else:
                self.observe(self.patience_validation - validation.since, **evidence)
        return fired
