"""``debug``: ProcessingStep running ``debug.py``: the five Debugger rules and the profiler rules, for every account.

Input ``/opt/ml/processing/training-output`` <- the train job's ``output.tar.gz`` (smdebug tensors, profiler
samples, history), located as ``Std:Join`` of ``OutputDataConfig.S3OutputPath``, ``TrainingJobName`` and
``output/output.tar.gz``. With ``debugger.managed: true`` the job's hook follows SageMaker's DebugHookConfig and
writes its tensors to ``<DebugHookConfig.S3OutputPath>/<TrainingJobName>/debug-output`` (the SDK's
``Estimator.latest_job_debugger_artifacts_path``), not into ``output.tar.gz``: a second input
``/opt/ml/processing/tensors`` reads them from there (``debug.py --tensors``). Output ``/opt/ml/processing/debug``
-> ``debug.json`` (under the execution's own prefix), declared as the PropertyFile ``DebugReport`` that the quality
gate reads (``summary.blocking_issues_found``, ``summary.blocking_reason``).

Arguments: ``--blocking-rules`` (``debugger.blocking_rules``) and one ``--<rule>-<parameter> <value>`` per
configured rule parameter, both names in kebab case (``--vanishing-gradient-threshold 1e-07``,
``--low-gpu-utilization-threshold-p95 70``). Parameter names and defaults follow the AWS Debugger built-in rules
documentation (https://docs.aws.amazon.com/sagemaker/latest/dg/debugger-built-in-rules.html).
"""

from __future__ import annotations

import re

from sagemaker.processing import ProcessingInput, ProcessingOutput
from sagemaker.workflow.functions import Join
from sagemaker.workflow.properties import PropertyFile
from sagemaker.workflow.steps import ProcessingStep, TrainingStep

from imgclf.schemas import DEBUG_FILE, DEBUG_PROPERTY_FILE
from steps.context import PROCESSING_ROOT, ReportingStep, StepContext, make_processor

STEP_NAME = "debug"
OUTPUT_NAME = "debug"
TRAINING_OUTPUT_DIR = f"{PROCESSING_ROOT}/training-output"
TENSORS_DIR = f"{PROCESSING_ROOT}/tensors"
REPORT_DIR = f"{PROCESSING_ROOT}/debug"


def kebab(name: str) -> str:
    """``LowGPUUtilization`` -> ``low-gpu-utilization``; ``threshold_p95`` -> ``threshold-p95``."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "-", name)
    return spaced.replace("_", "-").lower()


def rule_arguments(ctx: StepContext) -> list[str]:
    """``--blocking-rules A,B`` then ``--<rule>-<param> <value>`` for each configured rule parameter (sorted)."""
    debugger = ctx.config.debugger
    arguments = ["--blocking-rules", ",".join(debugger.blocking_rules)]
    for rules in (debugger.rules, debugger.profiler_rules):
        for rule, params in sorted(rules.items()):
            for param, value in sorted(params.items()):
                text = str(value).lower() if isinstance(value, bool) else str(value)
                arguments += [f"--{kebab(rule)}-{kebab(param)}", text]
    return arguments


def build(ctx: StepContext, train: TrainingStep) -> ReportingStep:
    """Return the ``debug`` step and its ``DebugReport`` PropertyFile."""
    report = PropertyFile(name=DEBUG_PROPERTY_FILE, output_name=OUTPUT_NAME, path=DEBUG_FILE)
    training_output = Join(
        on="/",
        values=[
            train.properties.OutputDataConfig.S3OutputPath,
            train.properties.TrainingJobName,
            "output",
            "output.tar.gz",
        ],
    )
    inputs = [ProcessingInput(input_name="training-output", source=training_output, destination=TRAINING_OUTPUT_DIR)]
    tensors_arguments = []
    if ctx.config.debugger.managed:
        hook_output = Join(on="/", values=[
            train.properties.DebugHookConfig.S3OutputPath, train.properties.TrainingJobName, "debug-output",
        ])  # fmt: skip
        inputs.append(ProcessingInput(input_name="tensors", source=hook_output, destination=TENSORS_DIR))
        tensors_arguments = ["--tensors", TENSORS_DIR]
    step_args = make_processor(ctx, STEP_NAME).run(
        code="debug.py",
        source_dir=ctx.code.s3_uri,
        inputs=inputs,
        outputs=[
            ProcessingOutput(
                output_name=OUTPUT_NAME, source=REPORT_DIR, destination=ctx.execution_uri(STEP_NAME, OUTPUT_NAME)
            )
        ],
        arguments=["--training-output", TRAINING_OUTPUT_DIR, "--output-dir", REPORT_DIR, *tensors_arguments,
                   *rule_arguments(ctx)],
        kms_key=ctx.config.security.kms_key_id,
    )
    step = ProcessingStep(name=STEP_NAME, step_args=step_args, property_files=[report], cache_config=ctx.cache)
    return ReportingStep(step, report)
