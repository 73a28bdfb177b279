"""What the five Debugger rules share: evidence collection, loss tensors, and train/eval phases of a trial.

Every rule records each violation as evidence ``{"step", "mode", "mode_step", "tensor", "value", "threshold"}``
(global step, smdebug mode name, step within the mode) and the closest call when nothing is violated, so that
``debug.json`` shows why a rule passed as well as why it fired.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from smdebug.core.modes import ModeKeys
from smdebug.exceptions import TensorUnavailableForStep
from smdebug.rules import Rule

#: Findings kept in full in the evidence; the count is always exact.
MAX_FINDINGS = 5


@dataclass
class Phase:
    """A maximal run of consecutive saved global steps in one mode (one training epoch or validation pass)."""

    mode: ModeKeys
    steps: list[int] = field(default_factory=list)


class EvidenceRule(Rule):
    """An ``smdebug.rules.Rule`` that keeps its findings and the closest non-violation for ``debug.json``.

    Subclasses set ``self.checked`` (number of evaluations made) and call ``self.found`` / ``self.observe``.
    ``result()`` returns ``(status, evidence)``; ``not_applicable_reason`` explains a rule that had no data.
    """

    def __init__(self, base_trial, parameters: dict):
        super().__init__(base_trial, action_str="")
        self.parameters = parameters
        self.findings: list[dict] = []
        self.finding_count = 0
        self.closest: dict | None = None
        self.checked = 0
        self.not_applicable_reason = ""

    def found(self, **evidence) -> None:
        """Record one violation."""
        self.finding_count += 1
        if len(self.findings) < MAX_FINDINGS:
            self.findings.append(_clean(evidence))

    def observe(self, margin: float, **evidence) -> None:
        """Keep the evaluation closest to firing; ``margin`` >= 0 is its distance to the threshold (smaller: closer)."""
        if self.closest is None or margin < self.closest["_margin"]:
            self.closest = {"_margin": margin, **_clean(evidence)}

    def describe(self, step: int) -> dict:
        """Return ``{"step", "mode", "mode_step"}`` for a global ``step``."""
        mode, mode_step = self.base_trial.mode_modestep(step)
        return {"step": int(step), "mode": mode.name if mode else None, "mode_step": mode_step}

    def result(self) -> tuple[str, dict]:
        """Return the verdict (IssuesFound / NoIssuesFound / NotApplicable) and its evidence."""
        evidence: dict = {"parameters": self.parameters, "evaluations": self.checked}
        if self.finding_count:
            evidence.update(violations=self.finding_count, first=self.findings[0], findings=self.findings)
            return "IssuesFound", evidence
        if self.checked == 0:
            evidence["reason"] = self.not_applicable_reason or "no data this rule can evaluate"
            return "NotApplicable", evidence
        if self.closest is not None:
            evidence["closest"] = {k: v for k, v in self.closest.items() if k != "_margin"}
        return "NoIssuesFound", evidence


def loss_tensor_names(
    trial, tensor_regex: list[str] | None = None, collection_names: list[str] | None = None, use_losses=True
) -> list[str]:
    """Scalar loss tensors of ``trial``: the union of ``collection_names``, ``tensor_regex`` matches and (when
    ``use_losses``) the ``losses`` collection; falls back to the ``losses`` collection when nothing is given."""
    names: set[str] = set()
    for collection in collection_names or []:
        names.update(trial.tensor_names(collection=collection))
    if tensor_regex:
        names.update(trial.tensor_names(regex=tensor_regex))
    if (use_losses or not names) and "losses" in trial.collections():
        names.update(trial.tensor_names(collection="losses"))
    return sorted(names)


def phases(trial, tensor_name: str) -> list[Phase]:
    """Split the global steps where ``tensor_name`` was saved into train/eval phases, in order."""
    result: list[Phase] = []
    for step in trial.tensor(tensor_name).steps():
        mode, _ = trial.mode_modestep(step)
        if not result or result[-1].mode != mode:
            result.append(Phase(mode=mode))
        result[-1].steps.append(step)
    return result


def scalar(trial, tensor_name: str, step: int) -> float | None:
    """The tensor's value at global ``step`` as a float (mean for non-scalars), or None when not saved."""
    try:
        value = trial.tensor(tensor_name).value(step)
    except TensorUnavailableForStep:
        return None
    return float(value.mean()) if hasattr(value, "mean") else float(value)


def phase_mean(trial, tensor_name: str, phase: Phase) -> float:
    """Mean of the tensor over the phase's steps (NaN when none was saved)."""
    values = [v for v in (scalar(trial, tensor_name, s) for s in phase.steps) if v is not None]
    return sum(values) / len(values) if values else math.nan


def matches(name: str, patterns: list[str]) -> bool:
    """True when ``name`` matches any of the regex ``patterns`` (``re.match``, as smdebug does)."""
    return any(re.match(pattern, name) for pattern in patterns)


def _clean(evidence: dict) -> dict:
    """Make evidence JSON-friendly: numpy scalars to floats, non-finite floats to strings."""
    out = {}
    for key, value in evidence.items():
        if hasattr(value, "item"):
            value = value.item()
        if isinstance(value, float) and not math.isfinite(value):
            value = str(value)
        out[key] = value
    return out
