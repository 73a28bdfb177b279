"""LossNotDecreasing: fires when the loss has not decreased over ``num_steps`` steps.

AWS Debugger built-in rule, https://docs.aws.amazon.com/sagemaker/latest/dg/debugger-built-in-rules.html
(section LossNotDecreasing). Defaults: ``num_steps`` 10, ``diff_percent`` 0 (any non-decrease fires),
``use_losses_collection`` True, ``collection_names`` / ``tensor_regex`` None, ``mode`` None (EVAL, then TRAIN,
then GLOBAL).

How a check works: evaluation happens every ``num_steps`` saved steps of the chosen mode; the documented rule
compares the loss at the check step with the loss ``num_steps`` earlier. Our hook saves the loss of every
minibatch, and one minibatch's loss is too noisy to compare with another, so we compare the mean of the loss
over the steps since the previous check with the mean over the window before it (the very first window is
compared with the first saved step). With one saved value per window this is exactly the documented rule.
``diff_percent`` > 0 requires the mean to drop by at least that percentage. With ``mode`` None the first mode
(in the documented order) that has enough saved steps for one check is used.

``increase_threshold_percent`` (default None: off) comes from the open-source smdebug 0.x version of this rule:
the loss may rise up to that percentage above the lowest value seen so far before the rule fires; a window
above the lowest value but within that margin is tolerated, any other window must still decrease as above.
"""

from __future__ import annotations

import math

from smdebug.core.modes import ModeKeys

from .base import EvidenceRule, loss_tensor_names, scalar


class LossNotDecreasing(EvidenceRule):
    """See the module docstring; one evaluation per loss tensor and window."""

    def __init__(
        self,
        base_trial,
        collection_names=None,
        tensor_regex=None,
        use_losses_collection: bool = True,
        num_steps: int = 10,
        diff_percent: float = 0.0,
        mode: str | None = None,
        increase_threshold_percent: float | None = None,
    ):
        parameters = {
            "collection_names": collection_names,
            "tensor_regex": tensor_regex,
            "use_losses_collection": use_losses_collection,
            "num_steps": int(num_steps),
            "diff_percent": float(diff_percent),
            "mode": mode,
            "increase_threshold_percent": increase_threshold_percent,
        }
        super().__init__(base_trial, parameters)
        if int(num_steps) < 1:
            raise ValueError(f"LossNotDecreasing.num_steps must be >= 1, got {num_steps}")
        self.num_steps = int(num_steps)
        self.diff_percent = float(diff_percent)
        self.increase_threshold = None if increase_threshold_percent is None else float(increase_threshold_percent)
        self.losses = loss_tensor_names(base_trial, tensor_regex, collection_names, use_losses_collection)
        self.mode = self._choose_mode(mode)
        self.state: dict[str, dict] = {}  # per tensor: previous check step, previous window mean, window values
        if not self.losses:
            self.not_applicable_reason = "no loss tensors were saved (collection 'losses')"
        elif self.mode is None:
            self.not_applicable_reason = f"fewer than {self.num_steps + 1} saved loss steps in every mode"
        self.parameters["mode_used"] = self.mode.name if self.mode else None

    def _choose_mode(self, mode: str | None):
        candidates = [ModeKeys[mode]] if mode else [ModeKeys.EVAL, ModeKeys.TRAIN, ModeKeys.GLOBAL]
        for candidate in candidates:
            for name in self.losses:
                mode_steps = self.base_trial.tensor(name).steps(mode=candidate)
                if mode_steps and mode_steps[-1] - mode_steps[0] >= self.num_steps:
                    return candidate
        return None

    def invoke_at_step(self, step):
        if self.mode is None:
            return False
        mode, mode_step = self.base_trial.mode_modestep(step)
        if self.mode != ModeKeys.GLOBAL:
            if mode != self.mode:
                return False
        else:
            mode_step = step
        fired = False
        for name in self.losses:
            value = scalar(self.base_trial, name, step)
            if value is None:
                continue
            state = self.state.setdefault(name, {"check": None, "mean": None, "window": [], "lowest": math.inf})
            if state["check"] is None:
                state.update(check=mode_step, mean=value, window=[], lowest=value)
                continue
            state["window"].append(value)
            if mode_step - state["check"] < self.num_steps:
                continue
            current = sum(state["window"]) / len(state["window"])
            previous = state["mean"]
            self.checked += 1
            decrease = (previous - current) / abs(previous) * 100.0 if previous else math.inf
            where = self.describe(step)
            evidence = dict(
                where,
                tensor=name,
                value=current,
                previous_value=previous,
                previous_mode_step=state["check"],
                decrease_percent=decrease,
                threshold=self.diff_percent,
            )
            not_decreasing = current >= previous if self.diff_percent == 0 else decrease < self.diff_percent
            lowest = state["lowest"]
            if self.increase_threshold is not None and current > lowest:
                evidence.update(lowest_value=lowest, increase_threshold_percent=self.increase_threshold)
                not_decreasing = (current - lowest) / abs(lowest) * 100.0 > self.increase_threshold if lowest else True
            state["lowest"] = min(lowest, current)
            if not_decreasing:
                self.found(**evidence)
                fired = True
            else:
                self.observe(decrease - self.diff_percent, **evidence)
            state.update(check=mode_step, mean=current, window=[])
        return fired
