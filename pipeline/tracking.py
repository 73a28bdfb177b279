"""Experiment tracking settings shared by the definition builder and the local executor (docs/tracking.md).

The definition carries only static values in each tracked job's ``Environment``: the tracking URI (when
``tracking.mlflow_uri`` is set), the experiment name and the step's name. SageMaker's step cache key includes a
training or processing job's ``Environment`` ("Default cache key attributes by pipeline step type",
https://docs.aws.amazon.com/sagemaker/latest/dg/pipelines-default-keys.html), so a per-execution value there (a
parent run id, the execution ARN) would make every tracked step miss the cache on every execution. The parent run
is therefore found per execution outside the definition: the local executor creates it and hands its id to each
job's process (``MLFLOW_PARENT_RUN_ID``); in AWS each job reads its execution's ARN from its own tags and finds or
creates the parent run tagged with it (``imgclf.execution_run``).
"""

from __future__ import annotations

from pathlib import Path

from imgclf.tracking import ENV_EXPERIMENT, ENV_STEP, ENV_URI
from pipeline.config import Config

#: Steps whose jobs log to MLflow (split logs nothing worth comparing across executions).
TRACKED_STEPS = ("tune", "train", "debug", "evaluate")
#: The local store of a workspace: a SQLite database and an artifact folder in the runs folder.
LOCAL_DATABASE = "mlflow.db"
LOCAL_ARTIFACTS = "mlartifacts"


def job_environment(config: Config, step: str) -> dict[str, str]:
    """Environment variables that make the jobs of ``step`` log to MLflow; empty when tracking is off or the
    step is not tracked. ``MLFLOW_TRACKING_URI`` only when ``tracking.mlflow_uri`` is set (local mode supplies its
    workspace store to the job's process)."""
    if not config.tracking.enabled or step not in TRACKED_STEPS:
        return {}
    environment = {ENV_EXPERIMENT: config.experiment_name, ENV_STEP: step}
    if config.tracking.mlflow_uri:
        environment[ENV_URI] = config.tracking.mlflow_uri
    return environment


def local_tracking_uri(runs: Path) -> str:
    """``sqlite:///<runs folder>/mlflow.db``: the workspace's local tracking store (absolute path)."""
    return f"sqlite:///{(Path(runs).resolve() / LOCAL_DATABASE).as_posix()}"


def local_artifact_uri(runs: Path) -> str:
    """``file://<runs folder>/mlartifacts``: where local runs keep their artifacts."""
    return (Path(runs).resolve() / LOCAL_ARTIFACTS).as_uri()


def model_package_metadata(config: Config) -> dict | None:
    """``CustomerMetadataProperties`` of the registered model package that lead to its MLflow runs: the
    experiment, the tracking URI when configured, and the execution ARN (an execution variable: the parent run
    carries it as tag ``sagemaker.pipeline_execution_arn``). None when tracking is off. The RegisterModel step is
    not cached, so the per-execution value costs no cache hit."""
    if not config.tracking.enabled:
        return None
    from sagemaker.workflow.execution_variables import ExecutionVariables

    metadata = {"mlflow_experiment": config.experiment_name,
                "pipeline_execution_arn": ExecutionVariables.PIPELINE_EXECUTION_ARN}  # fmt: skip
    if config.tracking.mlflow_uri:
        metadata["mlflow_tracking_uri"] = config.tracking.mlflow_uri
    return metadata


def status_line(config: Config) -> str | None:
    """Where ``status`` says an execution's MLflow runs are (experiment and tracking URI; each job's run is named
    after the job and tagged ``sagemaker.job_name``); None when tracking is off."""
    if not config.tracking.enabled:
        return None
    where = config.tracking.mlflow_uri or "nowhere (tracking.mlflow_uri is not set: the AWS jobs log nothing)"
    return (f"MLflow: experiment {config.experiment_name!r} at {where}; one run per execution (tag "
            "sagemaker.pipeline_execution_arn) with one nested run per job (tag sagemaker.job_name)")
