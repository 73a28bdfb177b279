"""MLflow experiment tracking from inside a job: one run per job, nested under its pipeline execution's run.

The job's environment says where to log (docs/tracking.md):

    MLFLOW_TRACKING_URI     the tracking server: a SageMaker MLflow tracking server ARN (needs the sagemaker-mlflow
                            plugin), an http(s) URL, or a database/file store; unset: the job does not track
    MLFLOW_EXPERIMENT_NAME  the experiment (the pipeline's name); unset: the job does not track
    MLFLOW_PARENT_RUN_ID    the execution's run (optional): this job's run is created as its child
    PIPELINE_STEP_NAME      the pipeline step that runs this job (tag ``pipeline.step``)

The first three are MLflow's own environment variables. The pipeline definition carries only static values
(tracking URI, experiment, step name), so SageMaker's step cache key, which includes a job's ``Environment``,
stays the same from one execution to the next; the local executor adds ``MLFLOW_PARENT_RUN_ID`` to the job's
process only.

Tracking never fails a job: the first error (mlflow not installed, server unreachable, access denied) prints one
``warning: experiment tracking off ...`` line and every later call does nothing. HTTP retries are kept short
(``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` 2, timeout 10 s, unless set) so an unreachable server costs seconds, not
minutes.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ENV_URI = "MLFLOW_TRACKING_URI"
ENV_EXPERIMENT = "MLFLOW_EXPERIMENT_NAME"
ENV_PARENT = "MLFLOW_PARENT_RUN_ID"
ENV_STEP = "PIPELINE_STEP_NAME"
#: MLflow's reserved tags (mlflow.utils.mlflow_tags): a run's parent and its name.
PARENT_TAG = "mlflow.parentRunId"
#: The MLflow 3 UI opens an experiment in its model-training view (runs, charts) rather than the GenAI view
#: (traces) when the experiment carries this tag with this value.
EXPERIMENT_KIND_TAG, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"
RUN_NAME_TAG = "mlflow.runName"
#: Our tags on every job run: the SageMaker job's name and type, and the pipeline step that ran it.
JOB_NAME_TAG = "sagemaker.job_name"
JOB_TYPE_TAG = "sagemaker.job_type"
STEP_TAG = "pipeline.step"
#: Where a processing job finds its own description (SageMaker Processing's container contract).
PROCESSING_JOB_CONFIG = "/opt/ml/config/processingjobconfig.json"
#: MLflow limits (mlflow.utils.validation): a batch holds at most 1000 metrics / 100 params / 100 tags; a param
#: value at most 6000 characters.
_MAX_METRICS, _MAX_PARAMS, _MAX_PARAM_LENGTH = 1000, 100, 6000
_QUICK_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
               "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}  # fmt: skip


def job_name(environ: Mapping[str, str] = os.environ, script: str | None = None) -> str:
    """This job's SageMaker name: ``TRAINING_JOB_NAME`` (training), else ``ProcessingJobName`` from the processing
    job's ``/opt/ml/config/processingjobconfig.json`` (found relative to the script too, since the code runs from
    ``/opt/ml/processing/input/code`` and local mode maps ``/opt/ml`` into a job folder), else ``local-<script>``."""
    if environ.get("TRAINING_JOB_NAME"):
        return environ["TRAINING_JOB_NAME"]
    script_path = Path(script or sys.argv[0]).resolve()
    candidates = [Path(PROCESSING_JOB_CONFIG)]
    if len(script_path.parents) > 3:
        candidates.append(script_path.parents[3] / "config" / Path(PROCESSING_JOB_CONFIG).name)
    for candidate in candidates:
        try:
            return json.loads(candidate.read_text(encoding="utf-8"))["ProcessingJobName"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return f"local-{script_path.stem or 'job'}"


def client_settings(uri: str) -> None:
    """Short HTTP retries (unless ``MLFLOW_HTTP_REQUEST_*`` are set) and quiet loggers, so that an unreachable
    server costs seconds and one warning (ours). urllib3 logs each retry as a WARNING; the sagemaker-mlflow
    plugin's request header provider is active for every URI and logs a WARNING on each request to a server that
    is not a SageMaker ARN (it parses the URI as an ARN)."""
    for key, value in _QUICK_HTTP.items():
        os.environ.setdefault(key, value)
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    if not uri.startswith("arn:"):
        logging.getLogger("mlflow.tracking.request_header.registry").setLevel(logging.ERROR)


class JobRun:
    """This job's MLflow run, or nothing when tracking is off. Every method is safe to call either way.

    Create with :meth:`start`; log with :meth:`log_params`, :meth:`log_metrics`, :meth:`set_tags`,
    :meth:`log_dict`; close with :meth:`end`.
    """

    def __init__(self, client: Any = None, run_id: str | None = None, uri: str = ""):
        self.client, self.run_id, self.uri = client, run_id, uri

    @property
    def active(self) -> bool:
        return self.run_id is not None

    @classmethod
    def start(cls, job_type: str, name: str | None = None, environ: Mapping[str, str] = os.environ,
              tags: Mapping[str, str] | None = None) -> JobRun:
        """Start the run of this job (``job_type``: ``TrainingJob`` or ``ProcessingJob``) named ``name`` (default
        :func:`job_name`). Returns an inactive JobRun, after one warning, when tracking is off or fails."""
        uri, experiment = environ.get(ENV_URI, ""), environ.get(ENV_EXPERIMENT, "")
        if not uri or not experiment:
            return cls()
        run = cls(uri=uri)
        client_settings(uri)
        try:
            from mlflow.tracking import MlflowClient

            client = MlflowClient(tracking_uri=uri)
            found = client.get_experiment_by_name(experiment)
            experiment_id = found.experiment_id if found else _create_experiment(client, experiment)
            name = name or job_name(environ)
            run_tags = {RUN_NAME_TAG: name, JOB_NAME_TAG: name, JOB_TYPE_TAG: job_type, **(tags or {})}
            if environ.get(ENV_PARENT):
                run_tags[PARENT_TAG] = environ[ENV_PARENT]
            if environ.get(ENV_STEP):
                run_tags[STEP_TAG] = environ[ENV_STEP]
            created = client.create_run(experiment_id, tags=run_tags, run_name=name)
        except Exception as error:  # noqa: BLE001  (tracking must never fail the job)
            run._off(error)
            return run
        run.client, run.run_id = client, created.info.run_id
        print(f"tracking: MLflow run {run.run_id} in experiment {experiment!r}", flush=True)
        return run

    def _off(self, error: BaseException) -> None:
        self.client = self.run_id = None
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        print(f"warning: experiment tracking off for this job ({ENV_URI}={self.uri}): {type(error).__name__}: "
              f"{first[:300]}", file=sys.stderr, flush=True)

    def _call(self, method: str, *args, **kwargs) -> None:
        if self.run_id is None:
            return
        try:
            getattr(self.client, method)(self.run_id, *args, **kwargs)
        except Exception as error:  # noqa: BLE001
            self._off(error)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log ``params`` (values as text, cut to MLflow's 6000 characters)."""
        from_items = [(str(k), str(v)[:_MAX_PARAM_LENGTH]) for k, v in params.items()]
        for start in range(0, len(from_items), _MAX_PARAMS):
            self._batch(params=from_items[start:start + _MAX_PARAMS])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log numeric ``metrics`` at ``step`` (the epoch, for per-epoch metrics); non-numbers are skipped."""
        items = [(str(k), float(v)) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool)]  # fmt: skip
        for start in range(0, len(items), _MAX_METRICS):
            self._batch(metrics=items[start:start + _MAX_METRICS], step=step)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set string tags on the run."""
        self._batch(tags=[(str(k), str(v)) for k, v in tags.items()])

    def log_dict(self, data: Any, artifact_file: str) -> None:
        """Store ``data`` as the JSON artifact ``artifact_file`` of the run."""
        self._call("log_dict", data, artifact_file)

    def end(self, status: str = "FINISHED") -> None:
        """Close the run (``FINISHED`` or ``FAILED``)."""
        self._call("set_terminated", status)

    def _batch(self, params=(), metrics=(), tags=(), step: int | None = None) -> None:
        if self.run_id is None or not (params or metrics or tags):
            return
        from mlflow.entities import Metric, Param, RunTag
        from mlflow.utils.time import get_current_time_millis

        now = get_current_time_millis()
        self._call("log_batch",
                   metrics=[Metric(key, value, now, step or 0) for key, value in metrics],
                   params=[Param(key, value) for key, value in params],
                   tags=[RunTag(key, value) for key, value in tags])  # fmt: skip


def _create_experiment(client: Any, name: str) -> str:
    """Create the experiment, or take the one a concurrent job created first."""
    from mlflow.exceptions import MlflowException

    try:
        return client.create_experiment(name, tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING})
    except MlflowException:
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def log_evaluation(evaluation: dict) -> None:
    """Log evaluate.py's ``evaluation.json`` as this job's run: each headline metric (``test_accuracy``, ...),
    per-class ``precision/<class>``, ``recall/<class>``, ``f1/<class>``, the confusion matrix and the whole file
    as artifacts."""
    run = JobRun.start("ProcessingJob")
    if not run.active:
        return
    from imgclf import schemas

    metrics = {f"test_{name}": value["value"] for name, value in evaluation[schemas.METRICS_SECTION].items()}
    for label, values in evaluation.get("per_class", {}).items():
        metrics.update({f"{kind}/{label}": values[kind] for kind in ("precision", "recall", "f1")})
    run.log_metrics(metrics)
    run.log_params({"test_images": evaluation.get("test_images"), "model": evaluation.get("model")})
    run.log_dict(evaluation.get("confusion_matrix", {}), "confusion_matrix.json")
    run.log_dict(evaluation, schemas.EVALUATION_FILE)
    run.end()


def log_debug_report(report: dict) -> None:
    """Log debug.py's verdicts as this job's run: a tag ``rule.<Rule>`` = its status per rule, metrics
    ``issues_found`` and ``blocking_issues_found``, and ``debug.json`` as an artifact."""
    run = JobRun.start("ProcessingJob")
    if not run.active:
        return
    from imgclf import schemas

    run.set_tags({f"rule.{rule}": result["status"] for rule, result in report["rules"].items()})
    summary = report["summary"]
    run.log_metrics({"issues_found": len(summary["issues_found"]),
                     "blocking_issues_found": summary["blocking_issues_found"]})  # fmt: skip
    run.log_dict(report, schemas.DEBUG_FILE)
    run.end()
