"""``register``: ModelStep registering the trained model in the model package group.

A plain ``sagemaker.model.Model`` on the AWS PyTorch inference image with ``SAGEMAKER_PROGRAM=inference.py`` and
``SAGEMAKER_SUBMIT_DIRECTORY=/opt/ml/model/code``: the model archive carries its own ``code/inference.py``
(docs/contracts.md), so the SDK adds no repack step. ModelMetrics: ``evaluation.json`` as model statistics.
Approval status: the ``ModelApprovalStatus`` parameter. The SDK names the definition's step
``register-RegisterModel`` (a ModelStep appends the request type to its name).
"""

from __future__ import annotations

from sagemaker.model import Model
from sagemaker.model_metrics import MetricsSource, ModelMetrics
from sagemaker.workflow.functions import Join
from sagemaker.workflow.model_step import ModelStep
from sagemaker.workflow.steps import ProcessingStep, TrainingStep

import pipeline._entrypoints  # noqa: F401  (puts entrypoints/ on sys.path for imgclf)
from imgclf.schemas import EVALUATION_FILE
from steps.context import StepContext
from steps.evaluate import OUTPUT_NAME as EVALUATION_OUTPUT

STEP_NAME = "register"
#: Where the inference container finds the handlers: the archive's code/ folder, unpacked under /opt/ml/model.
INFERENCE_ENV = {"SAGEMAKER_PROGRAM": "inference.py", "SAGEMAKER_SUBMIT_DIRECTORY": "/opt/ml/model/code"}


def inference_image(ctx: StepContext) -> str:
    """The PyTorch inference image for the production endpoint's instance type (CPU or GPU)."""
    return ctx.image_uri("inference", ctx.config.deploy.stages.production.instance_type)


def build(ctx: StepContext, train: TrainingStep, evaluate: ProcessingStep) -> ModelStep:
    """Return the ``register`` ModelStep (one ``RegisterModel`` request in the definition)."""
    config = ctx.config
    model = Model(
        image_uri=inference_image(ctx),
        model_data=train.properties.ModelArtifacts.S3ModelArtifacts,
        role=config.role_arn,
        env=dict(INFERENCE_ENV, PYTHONUNBUFFERED="1"),
        sagemaker_session=ctx.session,
    )
    evaluation_uri = Join(
        on="/",
        values=[evaluate.properties.ProcessingOutputConfig.Outputs[EVALUATION_OUTPUT].S3Output.S3Uri, EVALUATION_FILE],
    )
    step_args = model.register(
        content_types=config.registry.content_types,
        response_types=config.registry.response_types,
        inference_instances=config.registry.inference_instance_types,
        transform_instances=config.registry.transform_instance_types,
        model_package_group_name=config.model_package_group,
        approval_status=ctx.parameters.model_approval_status,
        model_metrics=ModelMetrics(
            model_statistics=MetricsSource(s3_uri=evaluation_uri, content_type="application/json")
        ),
        description=f"{config.training.model} image classifier trained by pipeline {config.pipeline_name}",
        domain="COMPUTER_VISION",
        task="IMAGE_CLASSIFICATION",
        framework="PYTORCH",
        framework_version=config.framework.version,
    )
    return ModelStep(name=STEP_NAME, step_args=step_args)
