"""Shapes of the reports that the pipeline reads back as PropertyFiles, defined once for scripts and builders.

``evaluation.json`` follows the SageMaker Model Registry's model-quality metrics shape
(https://docs.aws.amazon.com/sagemaker/latest/dg/model-monitor-model-quality-metrics.html, multiclass):
``{"multiclass_classification_metrics": {"accuracy": {"value": v, "standard_deviation": s}, ...}}``.
``debug.json`` holds one verdict per Debugger or profiler rule.
"""

from __future__ import annotations

EVALUATION_FILE = "evaluation.json"
EVALUATION_PROPERTY_FILE = "EvaluationReport"
#: JsonGet path that the quality gate reads from evaluation.json.
ACCURACY_JSON_PATH = "multiclass_classification_metrics.accuracy.value"
METRICS_SECTION = "multiclass_classification_metrics"

DEBUG_FILE = "debug.json"
DEBUG_PROPERTY_FILE = "DebugReport"
#: JsonGet path (an int) that the quality gate reads from debug.json.
BLOCKING_ISSUES_JSON_PATH = "summary.blocking_issues_found"
#: JsonGet path (a str) that the quality gate's FailStep message reads from debug.json: each blocking rule that
#: found issues or could not judge, with its reason ("none" when none).
BLOCKING_REASON_JSON_PATH = "summary.blocking_reason"

# Rule verdicts, as SageMaker reports RuleEvaluationStatus (plus the two states of our own rules runner).
ISSUES_FOUND = "IssuesFound"
NO_ISSUES_FOUND = "NoIssuesFound"
ERROR = "Error"
NOT_APPLICABLE = "NotApplicable"
SKIPPED = "Skipped"
RULE_STATUSES = (ISSUES_FOUND, NO_ISSUES_FOUND, ERROR, NOT_APPLICABLE, SKIPPED)

DEBUGGER_RULES = ("VanishingGradient", "Overfit", "Overtraining", "PoorWeightInitialization", "LossNotDecreasing")
PROFILER_RULES = ("LowGPUUtilization", "CPUBottleneck")


def metric(value: float, standard_deviation: float | None = None) -> dict:
    """Return one Model Registry metric entry ``{"value": v, "standard_deviation": s}`` (s omitted if None)."""
    entry = {"value": float(value)}
    if standard_deviation is not None:
        entry["standard_deviation"] = float(standard_deviation)
    return entry
