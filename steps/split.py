"""``split``: ProcessingStep running ``split.py`` (FrameworkProcessor, AWS PyTorch image) on the input images.

Input ``/opt/ml/processing/input/data`` <- the ``InputDataUri`` parameter (an ImageFolder tree).
Outputs (docs/contracts.md): ``train``, ``validation``, ``test`` (ImageFolder trees) and ``manifest``
(``manifest.json``, ``rejected.json``), each to ``s3://<bucket>/<prefix>/<pipeline>/<execution id>/split/<output>``.
"""

from __future__ import annotations

from sagemaker.processing import FrameworkProcessor, ProcessingInput, ProcessingOutput
from sagemaker.pytorch import PyTorch
from sagemaker.workflow.steps import ProcessingStep

from pipeline import tracking
from pipeline.instances import volume_kms_key
from steps.context import StepContext

STEP_NAME = "split"
PROCESSING_ROOT = "/opt/ml/processing"
OUTPUTS = ("train", "validation", "test", "manifest")


def make_processor(ctx: StepContext, step: str) -> FrameworkProcessor:
    """A FrameworkProcessor on the PyTorch image that runs one script of the code bundle (shared by split,
    debug and evaluate). Instance type: the ``ProcessingInstanceType`` parameter; one instance."""
    config = ctx.config
    return FrameworkProcessor(
        estimator_cls=PyTorch,
        framework_version=config.framework.version,
        py_version=config.framework.py_version,
        image_uri=ctx.processing_image,
        role=config.role_arn,
        instance_type=ctx.parameters.processing_instance_type,
        instance_count=config.instances.processing_count,
        command=["python3"],
        volume_size_in_gb=config.instances.volume_size_gb,
        # no volume key for instance types with instance store: CreateProcessingJob refuses it (pipeline.instances)
        volume_kms_key=volume_kms_key(config.instances.processing_type, config.security.kms_key_id),
        output_kms_key=config.security.kms_key_id,
        max_runtime_in_seconds=config.instances.max_runtime_s,
        base_job_name=ctx.job_name(step),
        sagemaker_session=ctx.session,
        tags=ctx.tags,
        network_config=ctx.network_config,
        # Unbuffered output: the job log shows each line as it is printed (local mode streams it too).
        env={"PYTHONUNBUFFERED": "1", **tracking.job_environment(config, step)},
    )


def build(ctx: StepContext) -> ProcessingStep:
    """Return the ``split`` step. Arguments: the fractions and seed of ``config.split``."""
    split = ctx.config.split
    processor = make_processor(ctx, STEP_NAME)
    step_args = processor.run(
        code="split.py",
        source_dir=ctx.code.s3_uri,
        inputs=[
            ProcessingInput(
                input_name="data",
                source=ctx.parameters.input_data_uri,
                destination=f"{PROCESSING_ROOT}/input/data",
            )
        ],
        outputs=[
            ProcessingOutput(
                output_name=name,
                source=f"{PROCESSING_ROOT}/{name}",
                destination=ctx.execution_uri(STEP_NAME, name),
            )
            for name in OUTPUTS
        ],
        arguments=[
            "--input-dir", f"{PROCESSING_ROOT}/input/data",
            "--train-dir", f"{PROCESSING_ROOT}/train",
            "--validation-dir", f"{PROCESSING_ROOT}/validation",
            "--test-dir", f"{PROCESSING_ROOT}/test",
            "--manifest-dir", f"{PROCESSING_ROOT}/manifest",
            "--train-fraction", str(split.train_fraction),
            "--validation-fraction", str(split.validation_fraction),
            "--test-fraction", str(split.test_fraction),
            "--seed", str(split.seed),
        ],  # fmt: skip
        kms_key=ctx.config.security.kms_key_id,
    )
    return ProcessingStep(name=STEP_NAME, step_args=step_args, cache_config=ctx.cache)
