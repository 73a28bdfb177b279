"""The ``endpoint_outcome`` CallbackStep, run locally.

In AWS, SageMaker Pipelines sends the step's token and inputs to the deploy function's SQS queue, and the function
answers with SendPipelineExecutionStepSuccess or SendPipelineExecutionStepFailure once the endpoint's update has
ended (``entrypoints/deploy_endpoint.py``, ``complete_callbacks``). Locally the ``deploy`` step already ends with
the outcome (it waits for the local endpoint's ``/ping``), so the step answers at once with the same rule: the
deploy step's ``status`` in ``SUCCEEDED_OUTCOMES`` succeeds with outputs ``status`` and ``reason``; one in
``FAILED_OUTCOMES`` fails with the reason; any other status cannot be waited for locally and fails, naming it.
"""

from __future__ import annotations

from typing import Any

from pipeline.local.status import StepOutcome, StepStatus


def answer(step_name: str, arguments: dict[str, Any]) -> StepOutcome:
    """The outcome of the callback step named ``step_name`` whose evaluated inputs are ``arguments`` (the deploy
    step's outputs ``endpoint_name``, ``endpoint_config_name``, ``status``, ``reason``); its outputs, as
    SendPipelineExecutionStepSuccess would set them, are the ``OutputParameters`` property."""
    from deploy_endpoint import FAILED_OUTCOMES, SUCCEEDED_OUTCOMES, callback_verdict

    status, reason = str(arguments.get("status") or ""), str(arguments.get("reason") or "")
    endpoint = arguments.get("endpoint_name") or "?"
    succeeded, failure_reason = callback_verdict(endpoint, status, reason)
    if succeeded:
        outputs = {"status": status, "reason": reason}
        return StepOutcome(StepStatus.SUCCEEDED, {"OutputParameters": outputs}, detail=f"endpoint {endpoint}: {status}")
    if succeeded is False:
        return StepOutcome(StepStatus.FAILED, failure_reason=failure_reason)
    return StepOutcome(StepStatus.FAILED, failure_reason=(
        f"{step_name}: the deploy step reported {status!r}, which local mode cannot wait for (its deploy step ends "
        f"every deployment); expected one of {', '.join(SUCCEEDED_OUTCOMES + FAILED_OUTCOMES)}"))
