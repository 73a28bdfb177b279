"""MLflow experiment tracking from inside a job: one run per job, nested under its pipeline execution's run.

The job's environment says where to log (docs/tracking.md):

    MLFLOW_TRACKING_URI     the tracking server: a SageMaker MLflow tracking server ARN (needs the sagemaker-mlflow
                            plugin), an http(s) URL, or a database/file store; unset: the job does not track
    MLFLOW_EXPERIMENT_NAME  the experiment (the pipeline's name); unset: the job does not track
    MLFLOW_PARENT_RUN_ID    the execution's run (local mode): this job's run is created as its child; in AWS the job
                            finds its execution's run from its own tags instead (imgclf.execution_run)
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
#: Set by SageMaker in a training container (the processing job's ARN is in its config file).
ENV_JOB_ARN = "TRAINING_JOB_ARN"
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


def _processing_job_config(script: str | None = None) -> dict:
    """The processing job's ``/opt/ml/config/processingjobconfig.json`` (found relative to the script too, since the
    code runs from ``/opt/ml/processing/input/code`` and local mode maps ``/opt/ml`` into a job folder); {} when
    this is not a processing job."""
    script_path = Path(script or sys.argv[0]).resolve()
    candidates = [Path(PROCESSING_JOB_CONFIG)]
    if len(script_path.parents) > 3:
        candidates.append(script_path.parents[3] / "config" / Path(PROCESSING_JOB_CONFIG).name)
    for candidate in candidates:
        try:
            config = json.loads(candidate.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(config, dict) and config.get("ProcessingJobName"):
            return config
    return {}


def sagemaker_job_name(environ: Mapping[str, str] = os.environ, script: str | None = None) -> str | None:
    """This job's SageMaker name: ``TRAINING_JOB_NAME`` (training), else ``ProcessingJobName`` from the processing
    job's config; None outside a job."""
    return environ.get("TRAINING_JOB_NAME") or _processing_job_config(script).get("ProcessingJobName")


def job_name(environ: Mapping[str, str] = os.environ, script: str | None = None) -> str:
    """:func:`sagemaker_job_name`, else ``local-<script>``."""
    return sagemaker_job_name(environ, script) or f"local-{Path(script or sys.argv[0]).stem or 'job'}"


def job_arn(environ: Mapping[str, str] = os.environ, script: str | None = None) -> str | None:
    """This job's ARN as SageMaker gives it to the container: ``TRAINING_JOB_ARN`` (training) or ``ProcessingJobArn``
    in the processing job's config (where the SageMaker SDK reads them: ``sagemaker/experiments/_environment.py``);
    None in local mode, which sets neither."""
    return environ.get(ENV_JOB_ARN) or _processing_job_config(script).get("ProcessingJobArn")


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
              tags: Mapping[str, str] | None = None, script: str | None = None) -> JobRun:
        """Start the run of this job (``job_type``: ``TrainingJob`` or ``ProcessingJob``) named ``name`` (default
        :func:`job_name`), as a child of its execution's run: ``MLFLOW_PARENT_RUN_ID`` (local mode), else in AWS the
        run of the pipeline execution that started this job (:mod:`imgclf.execution_run`). A job that already has a
        run (a training job restarted after a spot interruption keeps its name) goes on logging to it. Returns an
        inactive JobRun, after one warning, when tracking is off or fails; a parent run that cannot be found costs
        one warning and the run is not nested."""
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
            known_name = name or sagemaker_job_name(environ, script)
            name = known_name or job_name(environ, script)
            parent = environ.get(ENV_PARENT) or _execution_parent(client, experiment_id, environ, script)
            previous = _job_run(client, experiment_id, known_name, parent) if known_name else None
            if previous is not None:
                client.update_run(previous, status="RUNNING")
                run_id = previous
            else:
                run_tags = {RUN_NAME_TAG: name, JOB_NAME_TAG: name, JOB_TYPE_TAG: job_type, **(tags or {})}
                if parent:
                    run_tags[PARENT_TAG] = parent
                if environ.get(ENV_STEP):
                    run_tags[STEP_TAG] = environ[ENV_STEP]
                run_id = client.create_run(experiment_id, tags=run_tags, run_name=name).info.run_id
        except Exception as error:  # noqa: BLE001  (tracking must never fail the job)
            run._off(error)
            return run
        run.client, run.run_id = client, run_id
        again = " (continued: this job's run from an earlier start)" if previous else ""
        print(f"tracking: MLflow run {run.run_id} in experiment {experiment!r}{again}", flush=True)
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


def _execution_parent(client: Any, experiment_id: str, environ: Mapping[str, str], script: str | None) -> str | None:
    """In AWS: the parent run of the pipeline execution that started this job (found or created); None in local
    mode (no job ARN), for a job outside a pipeline, or after one warning when the job's tags cannot be read."""
    arn = job_arn(environ, script)
    if not arn:
        return None
    from imgclf import execution_run

    try:
        execution = execution_run.pipeline_execution_arn(arn)
    except Exception as error:  # noqa: BLE001  (botocore's errors: no credentials, access denied)
        print(f"warning: experiment tracking: no parent run for this job (the tags of {arn} could not be read): "
              f"{type(error).__name__}: {str(error)[:300]}", file=sys.stderr, flush=True)  # fmt: skip
        return None
    return execution_run.find_or_create(client, experiment_id, execution) if execution else None


def _job_run(client: Any, experiment_id: str, name: str, parent: str | None) -> str | None:
    """The run an earlier start of job ``name`` (under ``parent``) created, or None. SageMaker job names are unique
    per account and Region, so a run with the name is this job's."""
    query = f"tags.`{JOB_NAME_TAG}` = '{name}'" + (f" and tags.`{PARENT_TAG}` = '{parent}'" if parent else "")
    found = client.search_runs([experiment_id], filter_string=query, max_results=1,
                               order_by=["attributes.start_time ASC"])  # fmt: skip
    return found[0].info.run_id if found else None


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
