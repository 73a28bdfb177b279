"""Build the SageMaker Pipeline from a :class:`~pipeline.config.Config`, offline and deterministically.

The step graph (names as in the definition JSON)::

    InputDataUri
         |
      [split] ProcessingStep: split.py -> train / validation / test / manifest
         |  \\______________________________________________
         |                                                  \\
      [tune] TuningStep: HyperparameterTuner over train.py    |
         |      (objective validation:accuracy, Maximize)     |
      [train] TrainingStep: train.py with                     |
         |      BestTrainingJob.TunedHyperParameters          |
         +-------------------------+                          |
         |                         |                          |
      [debug] ProcessingStep      [evaluate] ProcessingStep <-+ (test split + model.tar.gz)
         |  debug.py -> debug.json     |  evaluate.py -> evaluation.json
         |  (PropertyFile DebugReport) |  (PropertyFile EvaluationReport)
         +------------+----------------+
                      |
              [quality_gate] ConditionStep:
                 accuracy >= AccuracyThreshold AND blocking_issues_found == 0
                 /                                   \\
     [register-RegisterModel] ModelStep       [quality_gate_failed] FailStep
                 |                               (accuracy, threshold, blocking issues)
     [deploy] LambdaStep (deploy.enabled): create or update the endpoint

Nothing here calls AWS: the session is :class:`~pipeline.session.OfflinePipelineSession` and ``entrypoints/`` is
packed by :mod:`pipeline.package` into a content-hashed ``sourcedir.tar.gz`` referenced by S3 URI. What the
definition needs in S3 before a run (the code bundle and the SDK's ``runproc.sh`` scripts) is returned by
:func:`build` as ``uploads``; ``upsert`` uploads them and the local executor writes them into its store.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

# pipeline.session is the first import of the SDK: it sets the "sagemaker.config" logger first, which otherwise
# prints INFO lines to stdout when the SDK is imported (a library user of build() never runs the CLI's set-up).
from pipeline.session import OfflinePipelineSession, quiet_sdk  # isort: skip
from pipeline import package
from pipeline.config import Config
from steps import debug, deploy, evaluate, gate, register, split, train, tune
from steps.context import Parameters, StepContext

if TYPE_CHECKING:
    from sagemaker.workflow.pipeline import Pipeline
    from sagemaker.workflow.step_collections import StepCollection
    from sagemaker.workflow.steps import Step


@dataclass(frozen=True)
class BuiltPipeline:
    """A built pipeline: its ``definition`` (sorted-key JSON text), the ``pipeline`` object, and ``uploads``
    (S3 URI -> bytes that must exist before a run: the code bundle and each processing job's runproc.sh)."""

    definition: str
    pipeline: Pipeline
    uploads: dict[str, bytes]


def get_pipeline(config: Config, session: OfflinePipelineSession) -> Pipeline:
    """Return the Pipeline for ``config`` (steps as drawn in this module's docstring). Creates nothing in AWS.

    ``session`` supplies the SDK session (use :class:`OfflinePipelineSession`; its ``uploads`` fill when the
    definition is generated). Raises ValueError from the SDK when an argument is invalid.
    """
    from sagemaker.workflow.pipeline import Pipeline
    from sagemaker.workflow.pipeline_definition_config import PipelineDefinitionConfig

    code = package.bundle(config.s3_uri("code"))
    session.uploads.setdefault(code.s3_uri, code.data)
    ctx = StepContext(config=config, session=session, parameters=Parameters.from_config(config), code=code)

    split_step = split.build(ctx)
    tune_step = tune.build(ctx, split_step)
    train_step = train.build(ctx, split_step, tune_step)
    debug_report = debug.build(ctx, train_step)
    evaluate_report = evaluate.build(ctx, split_step, train_step)
    register_step = register.build(ctx, train_step, evaluate_report.step)
    if_steps: list[Step | StepCollection] = [register_step]
    if config.deploy.enabled:
        if_steps.extend(deploy.build(ctx, register_step))
    gate_step = gate.build(ctx, evaluate_report, debug_report, if_steps)

    return Pipeline(
        name=config.pipeline_name,
        parameters=ctx.parameters.as_list(),
        steps=[split_step, tune_step, train_step, debug_report.step, evaluate_report.step, gate_step],
        sagemaker_session=session,
        # keep base_job_prefix in job names (SageMaker appends a unique suffix); without it the SDK drops names
        pipeline_definition_config=PipelineDefinitionConfig(use_custom_job_prefix=True),
        # no SageMaker Experiments trial per execution: nothing reads it, and the definition stays minimal
        pipeline_experiment_config=None,
    )


def build(config: Config) -> BuiltPipeline:
    """Build the pipeline offline and return its definition (sorted keys, indent 2) and the uploads it needs.

    Every call builds anew (a pure function of ``config`` and ``entrypoints/``; about a second): a caller that
    needs the result twice keeps it, as :func:`pipeline.aws.upsert` does for its check.
    """
    with quiet_sdk():
        session = OfflinePipelineSession(region=config.region, bucket=config.bucket, prefix=config.prefix)
        pipeline = get_pipeline(config, session)
        definition = json.dumps(json.loads(pipeline.definition()), sort_keys=True, indent=2)
    return BuiltPipeline(definition=definition, pipeline=pipeline, uploads=dict(sorted(session.uploads.items())))


def definition_json(config: Config) -> str:
    """The pipeline definition JSON for ``config``: sorted keys, indent 2, byte-identical for the same config."""
    return build(config).definition
