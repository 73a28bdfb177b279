"""``split``: ProcessingStep running ``split.py`` (FrameworkProcessor, AWS PyTorch image) on the input images.

Input ``/opt/ml/processing/input/data`` <- the ``InputDataUri`` parameter (an ImageFolder tree).
Outputs (docs/contracts.md): ``train``, ``validation``, ``test`` (ImageFolder trees) and ``manifest``
(``manifest.json``, ``rejected.json``), each to ``s3://<bucket>/<prefix>/<pipeline>/<execution id>/split/<output>``.
"""

from __future__ import annotations

from sagemaker.processing import ProcessingInput, ProcessingOutput
from sagemaker.workflow.steps import ProcessingStep

from steps.context import PROCESSING_ROOT, StepContext, make_processor

STEP_NAME = "split"
OUTPUTS = ("train", "validation", "test", "manifest")


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
