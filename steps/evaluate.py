"""``evaluate``: ProcessingStep running ``evaluate.py`` on the trained model and the held-out test split.

Inputs: ``/opt/ml/processing/model`` <- ``train.properties.ModelArtifacts.S3ModelArtifacts`` (``model.tar.gz``),
``/opt/ml/processing/test`` <- the split step's ``test`` output. Output ``/opt/ml/processing/evaluation`` ->
``evaluation.json`` (Model Registry metrics shape) under ``<pipeline>/<execution id>/evaluate/evaluation``, declared
as the PropertyFile ``EvaluationReport``: each execution's report has its own URI, which the registered package's
ModelMetrics keep.
"""

from __future__ import annotations

from sagemaker.processing import ProcessingInput, ProcessingOutput
from sagemaker.workflow.properties import PropertyFile
from sagemaker.workflow.steps import ProcessingStep, TrainingStep

from imgclf.schemas import EVALUATION_FILE, EVALUATION_PROPERTY_FILE
from steps.context import PROCESSING_ROOT, ReportingStep, StepContext, make_processor

STEP_NAME = "evaluate"
OUTPUT_NAME = "evaluation"
MODEL_DIR = f"{PROCESSING_ROOT}/model"
TEST_DIR = f"{PROCESSING_ROOT}/test"
REPORT_DIR = f"{PROCESSING_ROOT}/evaluation"


def build(ctx: StepContext, split: ProcessingStep, train: TrainingStep) -> ReportingStep:
    """Return the ``evaluate`` step and its ``EvaluationReport`` PropertyFile."""
    report = PropertyFile(name=EVALUATION_PROPERTY_FILE, output_name=OUTPUT_NAME, path=EVALUATION_FILE)
    test_uri = split.properties.ProcessingOutputConfig.Outputs["test"].S3Output.S3Uri
    step_args = make_processor(ctx, STEP_NAME).run(
        code="evaluate.py",
        source_dir=ctx.code.s3_uri,
        inputs=[
            ProcessingInput(
                input_name="model", source=train.properties.ModelArtifacts.S3ModelArtifacts, destination=MODEL_DIR
            ),
            ProcessingInput(input_name="test", source=test_uri, destination=TEST_DIR),
        ],
        outputs=[
            ProcessingOutput(
                output_name=OUTPUT_NAME, source=REPORT_DIR, destination=ctx.execution_uri(STEP_NAME, OUTPUT_NAME)
            )
        ],
        arguments=[
            "--model-dir", MODEL_DIR,
            "--test-dir", TEST_DIR,
            "--output-dir", REPORT_DIR,
            "--batch-size", str(ctx.config.evaluation.batch_size),
        ],  # fmt: skip
        kms_key=ctx.config.security.kms_key_id,
    )
    step = ProcessingStep(name=STEP_NAME, step_args=step_args, property_files=[report], cache_config=ctx.cache)
    return ReportingStep(step, report)
