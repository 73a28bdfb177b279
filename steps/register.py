"""``register``: ModelStep registering the trained model in the model package group.

A plain ``sagemaker.model.Model`` on the AWS PyTorch inference image with ``SAGEMAKER_PROGRAM=inference.py`` and
``SAGEMAKER_SUBMIT_DIRECTORY=/opt/ml/model/code``: the model archive carries its own ``code/inference.py``
(docs/contracts.md), so the SDK adds no repack step. ModelMetrics: ``evaluation.json`` as model statistics.
Approval status: the ``ModelApprovalStatus`` parameter. The SDK names the definition's step
``register-RegisterModel`` (a ModelStep appends the request type to its name).

Images: a model package's ``InferenceSpecification`` has one image, and the AWS PyTorch inference images are
built per processor (``-cpu-``/``-gpu-`` tags). The primary specification carries the image for the production
endpoint's ``deploy.stages.production.instance_type`` (what the deploy Lambda's CreateModel from the package uses)
and the registry's instance types of the same processor; the types of the other processor (e.g.
``ml.g4dn.xlarge`` beside ``ml.m5.large``) go to one ``AdditionalInferenceSpecifications`` entry with that
processor's image (CreateModelPackage API), so an endpoint on a GPU type gets the GPU image.
"""

from __future__ import annotations

from sagemaker.model import Model
from sagemaker.model_metrics import MetricsSource, ModelMetrics
from sagemaker.workflow.functions import Join
from sagemaker.workflow.model_step import ModelStep
from sagemaker.workflow.steps import ProcessingStep, TrainingStep

from imgclf.schemas import EVALUATION_FILE
from pipeline import tracking
from pipeline.instances import is_gpu
from steps.context import StepContext
from steps.evaluate import OUTPUT_NAME as EVALUATION_OUTPUT

STEP_NAME = "register"
#: Where the inference container finds the handlers: the archive's code/ folder, unpacked under /opt/ml/model.
INFERENCE_ENV = {"SAGEMAKER_PROGRAM": "inference.py", "SAGEMAKER_SUBMIT_DIRECTORY": "/opt/ml/model/code"}


def inference_image(ctx: StepContext, instance_type: str | None = None) -> str:
    """The PyTorch inference image for ``instance_type`` (default: the production endpoint's type)."""
    return ctx.image_uri("inference", instance_type or ctx.config.deploy.stages.production.instance_type)


def split_by_processor(ctx: StepContext, types: list[str]) -> tuple[list[str], list[str]]:
    """``types`` split into those of the production endpoint's processor (GPU or CPU) and the others."""
    gpu = is_gpu(ctx.config.deploy.stages.production.instance_type)
    return [t for t in types if is_gpu(t) == gpu], [t for t in types if is_gpu(t) != gpu]


def _additional_specification(ctx: StepContext, container: dict, realtime: list[str], transform: list[str]) -> dict:
    """One AdditionalInferenceSpecificationDefinition: ``container`` on the other processor's image."""
    other = (realtime or transform)[0]
    name = "gpu" if is_gpu(other) else "cpu"
    spec = {
        "Name": name,
        "Description": f"the model on the {name.upper()} inference image, for {', '.join(realtime + transform)}",
        "Containers": [dict(container, Image=inference_image(ctx, other))],
        "SupportedContentTypes": list(ctx.config.registry.content_types),
        "SupportedResponseMIMETypes": list(ctx.config.registry.response_types),
    }
    if realtime:
        spec["SupportedRealtimeInferenceInstanceTypes"] = realtime
    if transform:
        spec["SupportedTransformInstanceTypes"] = transform
    return spec


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
    realtime, other_realtime = split_by_processor(ctx, config.registry.inference_instance_types)
    transform, other_transform = split_by_processor(ctx, config.registry.transform_instance_types)
    step_args = model.register(
        content_types=config.registry.content_types,
        response_types=config.registry.response_types,
        # `pipeline check` reports a stage instance type missing from inference_instance_types
        inference_instances=realtime or config.registry.inference_instance_types,
        transform_instances=transform or None,
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
        customer_metadata_properties=tracking.model_package_metadata(config),
    )
    if other_realtime or other_transform:
        request = step_args.create_model_package_request
        container = request["InferenceSpecification"]["Containers"][0]
        request["AdditionalInferenceSpecifications"] = [
            _additional_specification(ctx, container, other_realtime, other_transform)
        ]
    return ModelStep(name=STEP_NAME, step_args=step_args)
