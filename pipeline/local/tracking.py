"""The MLflow parent run of a local execution, and what the executor adds to it (docs/tracking.md).

Tracking is on for an execution when its definition asks for it: a tracked job's ``Environment`` holds
``MLFLOW_EXPERIMENT_NAME`` (and ``MLFLOW_TRACKING_URI`` when ``tracking.mlflow_uri`` is set; otherwise the
workspace's SQLite store ``<runs>/mlflow.db``). :meth:`ExecutionRun.open` then creates one parent run per execution
(kept on ``--resume``) tagged with:

- ``sagemaker.pipeline_execution_arn``, ``sagemaker.pipeline_execution_id``, ``sagemaker.pipeline_name``;
- ``pipeline.definition_sha256`` (SHA-256 of the definition JSON, sorted keys), ``pipeline.code_bundle_sha256``
  (of ``sourcedir.tar.gz``), ``mlflow.source.git.commit`` when the project is a git checkout,
  ``pipeline.input_data_uri``;

and the execution's parameters as params. Each job's process gets ``MLFLOW_PARENT_RUN_ID`` (and the local tracking
URI) in its environment only, so the jobs' runs nest under it without touching the definition or the cache key.
As steps finish it marks the tuning step's best trial (tag ``pipeline.best_trial``), names cache hits and the
model package; at the end it attaches ``execution.json``, ``summary.txt`` and ``report.html`` (when written) and
closes the run with the execution's status. The run's ids go into execution.json under ``MLflow``.

A tracking store that cannot be reached prints one warning and the execution runs without tracking.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

from imgclf.execution_run import EXECUTION_ARN_TAG, EXECUTION_ID_TAG, PIPELINE_NAME_TAG
from imgclf.tracking import (
    ENV_EXPERIMENT,
    ENV_PARENT,
    ENV_URI,
    EXPERIMENT_KIND_TAG,
    JOB_NAME_TAG,
    MODEL_TRAINING,
    PARENT_TAG,
    client_settings,
)
from pipeline.hashing import sha256_of
from pipeline.local.status import StepStatus
from pipeline.tracking import local_artifact_uri, local_tracking_uri

REPOSITORY = Path(__file__).resolve().parent.parent.parent
#: MLflow's terminal run statuses for the pipeline execution statuses.
RUN_STATUS = {StepStatus.SUCCEEDED: "FINISHED", StepStatus.FAILED: "FAILED", StepStatus.STOPPED: "KILLED"}
BEST_TRIAL_TAG = "pipeline.best_trial"


def tracking_settings(definition: dict) -> tuple[str, str | None] | None:
    """``(experiment, tracking URI or None)`` from the first tracked job's Environment, or None (tracking off)."""

    def environments(steps: list[dict]):
        for step in steps:
            arguments = step.get("Arguments") or {}
            yield arguments.get("Environment") or {}
            yield (arguments.get("TrainingJobDefinition") or {}).get("Environment") or {}
            for key in ("IfSteps", "ElseSteps"):
                yield from environments(arguments.get(key) or [])

    for environment in environments(definition.get("Steps", [])):
        if isinstance(environment.get(ENV_EXPERIMENT), str):
            uri = environment.get(ENV_URI)
            return environment[ENV_EXPERIMENT], uri if isinstance(uri, str) else None
    return None


def git_commit(folder: Path = REPOSITORY) -> str | None:
    """The checked-out commit of ``folder``'s git repository, or None (not a checkout, or no git)."""
    try:
        result = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=30, check=False)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and len(commit) == 40 else None


class ExecutionRun:
    """The parent MLflow run of one execution; every method is a no-op once tracking is off."""

    def __init__(self, client: Any, run_id: str, uri: str, experiment: str, experiment_id: str):
        self.client, self.run_id, self.uri = client, run_id, uri
        self.experiment, self.experiment_id = experiment, experiment_id

    # -- opening ----------------------------------------------------------------------------------------------------
    @classmethod
    def open(cls, execution: Any) -> ExecutionRun | None:
        """The parent run of ``execution`` (a LocalExecution): created, or reopened from execution.json on resume.

        Returns None when the definition does not track, or (after one warning on stderr) when the tracking store
        cannot be reached.
        """
        settings = tracking_settings(execution.definition)
        if settings is None:
            return None
        experiment, uri = settings
        uri = uri or local_tracking_uri(execution.options.runs)
        try:
            return cls._open(execution, experiment, uri)
        except Exception as error:  # noqa: BLE001  (tracking must never fail an execution)
            first = (str(error).strip().splitlines() or [""])[0]
            print(f"warning: experiment tracking off for execution {execution.id} ({uri}): "
                  f"{type(error).__name__}: {first[:300]}", file=sys.stderr, flush=True)  # fmt: skip
            return None

    @classmethod
    def _open(cls, execution: Any, experiment: str, uri: str) -> ExecutionRun:
        import mlflow
        from mlflow.tracking import MlflowClient

        # alembic's and MLflow's INFO lines when a new SQLite store is created
        logging.getLogger("alembic").setLevel(logging.WARNING)
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
        client_settings(uri)  # short HTTP retries, no per-request warnings (imgclf.tracking)
        # the sagemaker-mlflow plugin reads the process-wide tracking URI to sign requests to a server ARN
        mlflow.set_tracking_uri(uri)
        client = MlflowClient(tracking_uri=uri)
        found = client.get_experiment_by_name(experiment)
        if found is not None:
            experiment_id = found.experiment_id
        else:
            local = uri.startswith("sqlite:")
            artifacts = local_artifact_uri(execution.options.runs) if local else None
            experiment_id = client.create_experiment(experiment, artifact_location=artifacts)
        if (found.tags if found else {}).get(EXPERIMENT_KIND_TAG) != MODEL_TRAINING:
            client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
        previous = (execution.record.get("MLflow") or {}).get("RunId")
        if previous:  # --resume: keep the execution's run
            client.update_run(previous, status="RUNNING")
            run = cls(client, previous, uri, experiment, experiment_id)
        else:
            created = client.create_run(experiment_id, run_name=f"{execution.pipeline_name}-{execution.id}",
                                        tags=cls._execution_tags(execution))  # fmt: skip
            run = cls(client, created.info.run_id, uri, experiment, experiment_id)
            run.log_params(execution.record.get("Parameters") or {})
        execution.record["MLflow"] = run.describe()
        return run

    @staticmethod
    def _execution_tags(execution: Any) -> dict[str, str]:
        definition = json.dumps(execution.definition, sort_keys=True).encode()
        record = execution.record
        tags = {
            EXECUTION_ARN_TAG: record["PipelineExecutionArn"],
            EXECUTION_ID_TAG: execution.id,
            PIPELINE_NAME_TAG: execution.pipeline_name,
            "pipeline.definition_sha256": hashlib.sha256(definition).hexdigest(),
            "pipeline.local": "true",
        }
        bundle = _code_bundle_uri(execution.definition)
        if bundle and execution.store.path(bundle).is_file():
            tags["pipeline.code_bundle_sha256"] = sha256_of(execution.store.path(bundle))
        commit = git_commit()
        if commit:
            tags["mlflow.source.git.commit"] = commit
        input_uri = (record.get("Parameters") or {}).get("InputDataUri")
        if input_uri:
            tags["pipeline.input_data_uri"] = str(input_uri)
        return tags

    def describe(self) -> dict[str, str]:
        """``{"TrackingUri", "ExperimentName", "ExperimentId", "RunId"}``: how to find this run (execution.json)."""
        return {"TrackingUri": self.uri, "ExperimentName": self.experiment, "ExperimentId": self.experiment_id,
                "RunId": self.run_id}  # fmt: skip

    def job_environment(self) -> dict[str, str]:
        """Environment for every job process of the execution: the parent run and the tracking URI."""
        return {ENV_PARENT: self.run_id, ENV_URI: self.uri}

    # -- logging ----------------------------------------------------------------------------------------------------
    def _safely(self, call, *args, **kwargs) -> Any:
        if self.client is None:
            return None
        try:
            return call(*args, **kwargs)
        except Exception as error:  # noqa: BLE001
            print(f"warning: experiment tracking off ({self.uri}): {type(error).__name__}: {error}"[:400],
                  file=sys.stderr, flush=True)  # fmt: skip
            self.client = None
            return None

    def log_params(self, params: dict) -> None:
        from mlflow.entities import Param

        items = [Param(str(k), str(v)[:6000]) for k, v in sorted(params.items())]
        for start in range(0, len(items), 100):
            self._safely(self.client.log_batch, self.run_id, params=items[start:start + 100])

    def set_tag(self, key: str, value: Any, run_id: str | None = None) -> None:
        self._safely(self.client.set_tag, run_id or self.run_id, key, str(value))

    def job_runs(self, job_name: str | None = None) -> list:
        """This execution's job runs (all, or the runs of ``job_name``)."""
        query = f"tags.`{PARENT_TAG}` = '{self.run_id}'"
        if job_name:
            query += f" and tags.`{JOB_NAME_TAG}` = '{job_name}'"
        found = self._safely(self.client.search_runs, [self.experiment_id], filter_string=query, max_results=1000)
        return list(found or [])

    # -- executor hooks -------------------------------------------------------------------------------------------
    def step_finished(self, step: dict) -> None:
        """Tag what a finished step tells: its status, a cache hit's source, the best trial, the model package."""
        name, properties = step["StepName"], step.get("Properties") or {}
        self.set_tag(f"pipeline.step.{name}", step["StepStatus"])
        if step.get("CacheHitResult"):  # the record's key, as in ListPipelineExecutionSteps
            source = step["CacheHitResult"].get("SourcePipelineExecutionArn", "")
            self.set_tag(f"pipeline.step.{name}.cache_hit", source)
        if step["StepType"] == "Tuning" and step["StepStatus"] == StepStatus.SUCCEEDED:
            best = (properties.get("BestTrainingJob") or {}).get("TrainingJobName")
            if best:
                self.set_tag("pipeline.best_training_job", best)
                for run in self.job_runs(best):
                    self.set_tag(BEST_TRIAL_TAG, "true", run.info.run_id)
                    self.set_tag("pipeline.best_trial_run_id", run.info.run_id)
        if step["StepType"] == "RegisterModel" and properties.get("ModelPackageArn"):
            self.set_tag("sagemaker.model_package_arn", properties["ModelPackageArn"])

    def finish(self, record: dict, run_dir: Path) -> None:
        """Attach the execution's records (and report.html when written) and close the run with its status."""
        self.set_tag("sagemaker.pipeline_execution_status", record.get("PipelineExecutionStatus", ""))
        for name in ("execution.json", "summary.txt", "report.html"):
            if (run_dir / name).is_file():
                self._safely(self.client.log_artifact, self.run_id, str(run_dir / name))
        status = RUN_STATUS.get(record.get("PipelineExecutionStatus"), "FAILED")
        self._safely(self.client.set_terminated, self.run_id, status)

    def attach(self, path: Path) -> None:
        """Attach one more file (e.g. a report written after the run) to the execution's run."""
        self._safely(self.client.log_artifact, self.run_id, str(path))


def _code_bundle_uri(definition: dict) -> str | None:
    for step in definition.get("Steps", []):
        arguments = step.get("Arguments") or {}
        hyperparameters = arguments.get("HyperParameters") or (arguments.get("TrainingJobDefinition") or {}).get(
            "StaticHyperParameters"
        ) or {}
        value = hyperparameters.get("sagemaker_submit_directory")
        if isinstance(value, str):
            try:
                return json.loads(value)
            except ValueError:
                return value
    return None
