"""``deploy``: LambdaStep that creates or updates the real-time endpoint from the registered model package.

The function (``deploy.lambda_function_name``) runs ``entrypoints/deploy_endpoint.py``'s ``handler``; ``upsert``
creates or updates it. Inputs (the handler's event): ``model_package_arn`` (the register step's
``ModelPackageArn``), ``endpoint_name``, ``instance_type``, ``initial_instance_count`` and ``role_arn`` (the role
the endpoint's model runs as: the pipeline role), ``network_isolation`` and, when configured, ``kms_key_id`` (not
for instance types with instance store, whose local disks the hardware encrypts: :mod:`pipeline.instances`),
``subnets`` and ``security_group_ids`` (comma-separated). Outputs: ``endpoint_name`` and ``status`` (``Creating``,
``Updating`` or ``Skipped`` when the package is not Approved).
"""

from __future__ import annotations

from sagemaker.lambda_helper import Lambda
from sagemaker.workflow.lambda_step import LambdaOutput, LambdaOutputTypeEnum, LambdaStep
from sagemaker.workflow.model_step import ModelStep

from pipeline.instances import volume_kms_key
from steps.context import StepContext

STEP_NAME = "deploy"


def function_arn(ctx: StepContext) -> str:
    """``arn:aws:lambda:<region>:<account>:function:<name>``; the account is read from the role ARN (no STS)."""
    config = ctx.config
    partition, account = config.role_arn.split(":")[1], config.role_arn.split(":")[4]
    return f"arn:{partition}:lambda:{config.region}:{account}:function:{config.deploy.lambda_function_name}"


def build(ctx: StepContext, register: ModelStep) -> LambdaStep:
    """Return the ``deploy`` step (not cached: it acts on an endpoint, and LambdaStep takes no CacheConfig)."""
    deploy = ctx.config.deploy
    security = ctx.config.security
    # The endpoint gets the same protections as the jobs: its volume key, VPC and network isolation.
    protections = {"network_isolation": "true" if security.enable_network_isolation else "false"}
    # CreateEndpointConfig takes no KmsKeyId for instance types with local storage (pipeline.instances)
    if volume_kms_key(deploy.instance_type, security.kms_key_id):
        protections["kms_key_id"] = security.kms_key_id
    if security.subnets:
        protections["subnets"] = ",".join(security.subnets)
        protections["security_group_ids"] = ",".join(security.security_group_ids)
    return LambdaStep(
        name=STEP_NAME,
        lambda_func=Lambda(function_arn=function_arn(ctx), session=ctx.session),
        inputs={
            "model_package_arn": register.properties.ModelPackageArn,
            "endpoint_name": deploy.endpoint_name,
            "instance_type": deploy.instance_type,
            "initial_instance_count": deploy.initial_instance_count,
            "role_arn": ctx.config.role_arn,
            **protections,
        },
        outputs=[
            LambdaOutput(output_name="endpoint_name", output_type=LambdaOutputTypeEnum.String),
            LambdaOutput(output_name="status", output_type=LambdaOutputTypeEnum.String),
        ],
    )
