"""``quality_gate``: ConditionStep between evaluation and registration.

Passes when ``evaluation.json``'s ``multiclass_classification_metrics.accuracy.value >= AccuracyThreshold`` AND
``debug.json``'s ``summary.blocking_issues_found == 0`` (both read with ``JsonGet`` through their PropertyFiles;
paths from ``imgclf.schemas``). Then ``register`` (and ``deploy`` when enabled) run; otherwise the FailStep
``quality_gate_failed`` ends the execution with a message holding the measured accuracy, the threshold, the
number of blocking rules that found issues or could not judge (Skipped, Error), the rules configured as blocking
and ``summary.blocking_reason`` (each such rule with its verdict and reason).
"""

from __future__ import annotations

from sagemaker.workflow.condition_step import ConditionStep
from sagemaker.workflow.conditions import ConditionEquals, ConditionGreaterThanOrEqualTo
from sagemaker.workflow.fail_step import FailStep
from sagemaker.workflow.functions import Join, JsonGet
from sagemaker.workflow.steps import Step

from imgclf.schemas import ACCURACY_JSON_PATH, BLOCKING_ISSUES_JSON_PATH, BLOCKING_REASON_JSON_PATH
from steps.context import ReportingStep, StepContext

STEP_NAME = "quality_gate"
FAIL_STEP_NAME = "quality_gate_failed"


def build(ctx: StepContext, evaluate: ReportingStep, debug: ReportingStep, if_steps: list[Step]) -> ConditionStep:
    """Return the gate over the evaluate and debug steps' reports; ``if_steps`` run on a pass."""
    accuracy = _json_get(evaluate, ACCURACY_JSON_PATH)
    blocking = _json_get(debug, BLOCKING_ISSUES_JSON_PATH)
    reason = _json_get(debug, BLOCKING_REASON_JSON_PATH)
    threshold = ctx.parameters.accuracy_threshold
    blocking_rules = ", ".join(ctx.config.debugger.blocking_rules) or "none"
    fail = FailStep(
        name=FAIL_STEP_NAME,
        # on="": the spaces are written out, so that no space lands before ")" or "." in the message
        error_message=Join(
            on="",
            values=[
                "Quality gate failed: test accuracy ", accuracy, " (threshold ", threshold,
                "); blocking Debugger rules that found issues or could not judge: ", blocking,
                f" (blocking rules: {blocking_rules}): ", reason,
                ". See the evaluate and debug steps' reports.",
            ],
        ),  # fmt: skip
    )
    return ConditionStep(
        name=STEP_NAME,
        conditions=[
            ConditionGreaterThanOrEqualTo(left=accuracy, right=threshold),
            ConditionEquals(left=blocking, right=0),
        ],
        if_steps=if_steps,
        else_steps=[fail],
    )


def _json_get(source: ReportingStep, json_path: str) -> JsonGet:
    return JsonGet(step_name=source.step.name, property_file=source.report, json_path=json_path)
