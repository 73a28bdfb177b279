"""``deploy``: LambdaStep that deploys the registered model package to the staging endpoint.

The function (``deploy.lambda_function_name``) runs ``entrypoints/deploy_endpoint.py``'s ``handler``; ``upsert``
creates or updates it. Inputs (the handler's event, :func:`pipeline.release.stage_event`): ``model_package_arn``
(the register step's ``ModelPackageArn``), the staging stage's ``endpoint_name``, ``instance_type`` and
``initial_instance_count``, ``role_arn`` (the role the endpoint's model runs as: the pipeline role), the endpoint's
protections (``network_isolation``, ``kms_key_id``, ``subnets``, ``security_group_ids``), data capture and the
blue/green rollout settings. Outputs: ``endpoint_name``, ``status`` (the endpoint's outcome when it ends within the
function's timeout: ``InService``, ``RolledBack``, ``Failed``; else ``Creating``/``Updating``; ``Unchanged``;
``Skipped`` when the package is not Approved) and ``reason``.
"""

from __future__ import annotations

from sagemaker.lambda_helper import Lambda
from sagemaker.workflow.lambda_step import LambdaOutput, LambdaOutputTypeEnum, LambdaStep
from sagemaker.workflow.model_step import ModelStep

from steps.context import StepContext

STEP_NAME = "deploy"


def function_arn(ctx: StepContext) -> str:
    """``arn:aws:lambda:<region>:<account>:function:<name>``; the account is read from the role ARN (no STS)."""
    config = ctx.config
    partition, account = config.role_arn.split(":")[1], config.role_arn.split(":")[4]
    return f"arn:{partition}:lambda:{config.region}:{account}:function:{config.deploy.lambda_function_name}"


def build(ctx: StepContext, register: ModelStep) -> LambdaStep:
    """Return the ``deploy`` step (not cached: it acts on an endpoint, and LambdaStep takes no CacheConfig).

    It deploys to the staging endpoint (``deploy.stages.staging``): production is reached only by ``promote``.
    """
    from pipeline.release import stage_event

    return LambdaStep(
        name=STEP_NAME,
        lambda_func=Lambda(function_arn=function_arn(ctx), session=ctx.session),
        inputs={"model_package_arn": register.properties.ModelPackageArn, **stage_event(ctx.config, "staging")},
        outputs=[
            LambdaOutput(output_name="endpoint_name", output_type=LambdaOutputTypeEnum.String),
            LambdaOutput(output_name="status", output_type=LambdaOutputTypeEnum.String),
            LambdaOutput(output_name="reason", output_type=LambdaOutputTypeEnum.String),
        ],
    )
