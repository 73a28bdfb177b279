"""``deploy``: LambdaStep that deploys the registered model package to the staging endpoint.

The function (``deploy.lambda_function_name``) runs ``entrypoints/deploy_endpoint.py``'s ``handler``; ``upsert``
creates or updates it. Inputs (the handler's event, :func:`pipeline.release.stage_event`): ``model_package_arn``
(the register step's ``ModelPackageArn``), the staging stage's ``endpoint_name``, ``instance_type`` and
``initial_instance_count``, ``role_arn`` (the role the endpoint's model runs as: the pipeline role), the endpoint's
protections (``network_isolation``, ``kms_key_id``, ``subnets``, ``security_group_ids``), data capture and the
blue/green rollout settings. Outputs: ``endpoint_name``, ``status`` (the endpoint's outcome when it ends within the
function's timeout: ``InService``, ``RolledBack``, ``Failed``; else ``Creating``/``Updating``; ``Unchanged``;
``Skipped`` when the package is not Approved) and ``reason``.

The step tells the function not to wait (``wait_for_outcome``): a blue/green update with canary traffic can take
longer than a Lambda may run (15 minutes). ``endpoint_outcome``, a CallbackStep after it, ends with the endpoint's
real outcome instead: SageMaker sends its token and inputs to the deploy function's SQS queue
(:func:`pipeline.release.outcome_queue_url`), and the function answers once the endpoint is InService (outputs
``status``, ``reason``) or fails the step with the reason when it failed or rolled back
(``deploy_endpoint.complete_callbacks``).
"""

from __future__ import annotations

from sagemaker.lambda_helper import Lambda
from sagemaker.workflow.callback_step import CallbackOutput, CallbackOutputTypeEnum, CallbackStep
from sagemaker.workflow.lambda_step import LambdaOutput, LambdaOutputTypeEnum, LambdaStep
from sagemaker.workflow.model_step import ModelStep

from steps.context import StepContext

STEP_NAME = "deploy"
OUTCOME_STEP_NAME = "endpoint_outcome"


def function_arn(ctx: StepContext) -> str:
    """``arn:aws:lambda:<region>:<account>:function:<name>``; the account is read from the role ARN (no STS)."""
    config = ctx.config
    partition, account = config.role_arn.split(":")[1], config.role_arn.split(":")[4]
    return f"arn:{partition}:lambda:{config.region}:{account}:function:{config.deploy.lambda_function_name}"


def build(ctx: StepContext, register: ModelStep) -> list[LambdaStep | CallbackStep]:
    """Return ``[deploy, endpoint_outcome]`` (neither is cached: they act on an endpoint, and neither step type
    takes a CacheConfig).

    They deploy to the staging endpoint (``deploy.stages.staging``): production is reached only by ``promote``.
    """
    from pipeline.release import outcome_queue_url, stage_event

    deploy = LambdaStep(
        name=STEP_NAME,
        lambda_func=Lambda(function_arn=function_arn(ctx), session=ctx.session),
        inputs={"model_package_arn": register.properties.ModelPackageArn, **stage_event(ctx.config, "staging"),
                "wait_for_outcome": "false"},  # fmt: skip
        outputs=[LambdaOutput(output_name=name, output_type=LambdaOutputTypeEnum.String)
                 for name in ("endpoint_name", "endpoint_config_name", "status", "reason")],  # fmt: skip
    )
    outcome = CallbackStep(
        name=OUTCOME_STEP_NAME,
        sqs_queue_url=outcome_queue_url(ctx.config),
        inputs={name: deploy.properties.Outputs[name]
                for name in ("endpoint_name", "endpoint_config_name", "status", "reason")},  # fmt: skip
        outputs=[CallbackOutput(output_name=name, output_type=CallbackOutputTypeEnum.String)
                 for name in ("status", "reason")],  # fmt: skip
    )
    return [deploy, outcome]
