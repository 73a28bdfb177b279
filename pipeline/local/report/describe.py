"""The report's sentences, as plain text (the page escapes them): what each step produced, how the quality gate's
conditions evaluated, why a rule reached its verdict, and numbers and times as people write them."""

from __future__ import annotations

import datetime
import math
from typing import Any

from imgclf import schemas
from pipeline.local.report.data import RunData, Unavailable, expression_context
from pipeline.local.status import JobStatus, StepStatus

#: split.py's order of the splits.
SPLIT_ORDER = ("train", "validation", "test")
#: ConditionStep condition types (the definition's ``Type``) as the comparison they make.
OPERATORS = {"GreaterThanOrEqualTo": ">=", "GreaterThan": ">", "LessThanOrEqualTo": "<=", "LessThan": "<",
             "Equals": "=="}  # fmt: skip


# -- values ------------------------------------------------------------------------------------------------------
def plain(value: Any) -> str:
    """A value as the report shows it: floats with 4 decimals (4 significant digits below 0.001), None as "-"."""
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.4g}" if abs(value) < 1e-3 and value != 0 else f"{value:.4f}"
    return str(value)


def short(value: Any) -> str:
    """A hyperparameter as a reader wants it: ``'"0.051392370149008416"'`` -> ``0.05139``; other text unchanged."""
    text = str(value).strip('"')
    try:
        number = float(text)
    except ValueError:
        return text
    if number.is_integer() and "." not in text and "e" not in text.lower():
        return text
    return f"{number:.4g}"


def utc_time(value: Any) -> str:
    """An epoch number (seconds, as DescribeModelPackage's JSON holds it) as UTC ISO 8601; text unchanged."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return datetime.datetime.fromtimestamp(value, tz=datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return str(value)


def in_split_order(totals: dict) -> dict:
    """``{split: count}`` as split.py makes them: train, validation, test (then any other)."""
    order = {name: index for index, name in enumerate(SPLIT_ORDER)}
    return dict(sorted(totals.items(), key=lambda item: order.get(item[0], len(order))))


def best_trial(trials: list[dict]) -> dict | None:
    """The trial with the highest ObjectiveValue (the tuner maximizes validation:accuracy), None when none has one."""
    scored = [t for t in trials if isinstance(t.get("ObjectiveValue"), (int, float))]
    return max(scored, key=lambda t: t["ObjectiveValue"]) if scored else None


def cache_source(step: dict) -> str:
    """``from <execution id>`` for a cache hit (CacheHitResult.SourcePipelineExecutionArn), else empty."""
    source = (step.get("CacheHitResult") or {}).get("SourcePipelineExecutionArn") or ""
    return f"from {source.rsplit('/', 1)[-1]}" if source else ""


# -- what each step produced ---------------------------------------------------------------------------------------
def step_detail(data: RunData, step: dict) -> str:
    """What a succeeded step produced, in one line (empty when nothing can be said): split counts, trials and the
    best one, epochs and the last epoch's metrics, issues found, test metrics, the quality gate's comparisons."""
    kind, name = step.get("StepType"), step["StepName"]
    if step.get("StepStatus") != StepStatus.SUCCEEDED:
        return ""
    try:
        if kind == "Processing":
            return _processing_detail(data, name)
        if kind == "Tuning":
            trials = [j for j in step.get("Jobs", []) if j.get("TunedHyperParameters")]
            if not trials:  # a cache hit records no jobs of its own
                return ""
            best = best_trial(trials)
            done = sum(1 for t in trials if t.get("Status") == JobStatus.COMPLETED)
            text = f"{len(trials)} trials ({done} completed)"
            return text + (f"; best {best['JobName']}: objective {best['ObjectiveValue']:.4f}" if best else "")
        if kind == "Training":
            epochs = data.output_json("history.json").get("epochs") or []
            if epochs:
                last = epochs[-1]
                count = f"{len(epochs)} epoch" + ("s" if len(epochs) != 1 else "")
                return (f"{count}; last: validation accuracy {plain(last.get('validation_accuracy'))}, "
                        f"validation loss {plain(last.get('validation_loss'))}, train loss "
                        f"{plain(last.get('train_loss'))}")  # fmt: skip
        if kind == "Condition":
            return condition_detail(data, step)
    except (Unavailable, OSError, ValueError, KeyError, TypeError, AttributeError):
        return ""
    return ""


def _processing_detail(data: RunData, name: str) -> str:
    for file_name, describe in ((schemas.DEBUG_FILE, _debug_detail), (schemas.EVALUATION_FILE, _evaluation_detail),
                                ("manifest.json", _split_detail)):  # fmt: skip
        try:
            return describe(data.processing_file(file_name, name))
        except Unavailable:
            continue
    return ""


def _split_detail(manifest: dict) -> str:
    totals = in_split_order(manifest.get("totals") or {})
    shown = ", ".join(f"{split} {count}" for split, count in totals.items())
    return (f"{sum(totals.values())} images of {len(manifest.get('classes', []))} classes: {shown}; "
            f"rejected {manifest.get('rejected', 0)}")


def _debug_detail(report: dict) -> str:
    summary = report.get("summary", {})
    found = summary.get("issues_found") or []
    return (f"issues found: {', '.join(found) or 'none'}; blocking issues: {summary.get('blocking_issues_found', '?')}"
            + (f"; rule errors: {', '.join(summary['errors'])}" if summary.get("errors") else ""))


def _evaluation_detail(evaluation: dict) -> str:
    metrics = evaluation.get(schemas.METRICS_SECTION) or {}
    shown = [f"{k} {plain(v.get('value'))}" for k, v in metrics.items() if isinstance(v, dict)][:3]
    return "test " + ", ".join(shown) if shown else ""


def condition_detail(data: RunData, step: dict) -> str:
    """``accuracy 0.976 >= AccuracyThreshold 0.9: True; blocking_issues_found 0 == 0: True (outcome True)``: the
    ConditionStep's conditions from definition.json, their operands evaluated as the executor did."""
    from pipeline.local import expressions

    spec = next((s for s in data.definition().get("Steps", []) if s.get("Name") == step["StepName"]), None)
    if spec is None:
        return ""
    context = expression_context(data)
    parts = []
    for condition in spec.get("Arguments", {}).get("Conditions", []):
        operator = OPERATORS.get(condition.get("Type"))
        if operator is None:
            parts.append(f"{condition.get('Type')}: {expressions.evaluate_condition(condition, context)}")
            continue
        left = expressions.evaluate(condition["LeftValue"], context)
        right = expressions.evaluate(condition["RightValue"], context)
        outcome = expressions.evaluate_condition(condition, context)
        parts.append(f"{_operand(condition['LeftValue'])} {plain(left)} {operator} "
                     f"{_operand(condition['RightValue'])}{plain(right)}: {outcome}")  # fmt: skip
    outcome = step.get("Properties", {}).get("Outcome")
    return "; ".join(parts) + (f" (outcome {outcome})" if outcome is not None else "")


def _operand(value: Any) -> str:
    """A short name for a condition operand: a JsonGet's last path part, a parameter's name; '' for a literal."""
    if isinstance(value, dict):
        if "Std:JsonGet" in value:
            path = str(value["Std:JsonGet"].get("Path", ""))
            parts = [p for p in path.split(".") if p not in ("value", schemas.METRICS_SECTION)]
            return parts[-1] if parts else path
        if "Get" in value and str(value["Get"]).startswith("Parameters."):
            return str(value["Get"]).removeprefix("Parameters.") + " "
    return ""


def why_not_registered(data: RunData) -> str:
    for step in data.steps_of("Condition"):
        outcome = step.get("Properties", {}).get("Outcome")
        if outcome == "False":
            return f"the quality gate {step['StepName']} evaluated to False"
    steps = data.steps_of("RegisterModel")
    if steps:
        return f"register step {steps[-1]['StepName']} is {steps[-1].get('StepStatus')}"
    return "this execution has no RegisterModel step"


# -- rules -------------------------------------------------------------------------------------------------------
def rule_why(status: str, evidence: dict) -> str:
    """One sentence on why the rule reached ``status``: the first violation (or the closest call) as value against
    threshold at a step, or the reason a rule could not judge."""
    focus = evidence.get("first") if status == schemas.ISSUES_FOUND else evidence.get("closest")
    if not focus and "value" in evidence and "threshold" in evidence:  # rules that judge one aggregate value
        focus = evidence
    for key in ("reason", "message"):
        if not focus and evidence.get(key):
            return str(evidence[key])
    if not focus:
        return ""
    where = f"at step {focus['step']}" if "step" in focus else ""
    if focus.get("mode"):
        where += f" ({focus['mode']}" + (f" step {focus['mode_step']})" if "mode_step" in focus else ")")
    what = str(focus.get("tensor") or focus.get("check") or "value")
    value, threshold = focus.get("value"), focus.get("threshold")
    if "decrease_percent" in focus:  # LossNotDecreasing: the change of the window mean is what is judged
        change = focus["decrease_percent"]
        moved = f"fell {plain(change)}%" if change >= 0 else f"rose {plain(-change)}%"
        return f"{what} window mean {moved} (needs to fall more than {plain(threshold)}%) {where}".strip()
    if status == schemas.ISSUES_FOUND:
        text = f"{what} {plain(value)} crossed the threshold {plain(threshold)} {where}".strip()
    else:
        text = f"closest call: {what} {plain(value)} against threshold {plain(threshold)} {where}".strip()
    if focus.get("issue"):
        text += f": {focus['issue']}"
    if evidence.get("violations"):
        text += f" ({evidence['violations']} violation(s))"
    return text
