"""The MLflow parent run of a SageMaker pipeline execution, found or created by the execution's jobs in AWS.

Nothing outside the jobs knows an execution when it starts (the definition is static, and a per-execution value in
a job's ``Environment`` would change SageMaker's step cache key: docs/tracking.md), so each tracked job finds its
execution at run time, from its own job:

1. The job's ARN: ``TRAINING_JOB_ARN`` in a training container, ``ProcessingJobArn`` in a processing job's
   ``/opt/ml/config/processingjobconfig.json`` (where the SageMaker SDK's own experiment tracking reads them:
   ``sagemaker/experiments/_environment.py``, ``_RunEnvironment.load``). Local mode sets neither, so local jobs
   never call AWS (the local executor hands them the parent run's id instead).
2. The execution's ARN: SageMaker tags every job a pipeline starts with ``sagemaker:pipeline-execution-arn`` (the
   SDK's lineage code reads that tag off training jobs: ``sagemaker/lineage/context.py``,
   ``EndpointContext.pipeline_execution_arn``). A tuning trial is started by the tuning job, whose tags are "also
   added to all training jobs that the tuning job launches" (API_CreateHyperParameterTuningJob, ``Tags``); if a
   trial lacks the tag anyway, the tuning job's own tags (``TuningJobArn`` of DescribeTrainingJob) are read.
   The execution role already has ``sagemaker:ListTags`` and ``sagemaker:DescribeTrainingJob`` on the pipeline's
   jobs (docs/iam/pipeline-execution-role.json, ``RunThePipelineJobs``).
3. The parent run: the experiment's run tagged ``sagemaker.pipeline_execution_arn`` = that ARN, created by the
   first job that finds none (:func:`find_or_create`).
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

#: SageMaker's tag on every job a pipeline execution starts.
PIPELINE_EXECUTION_TAG = "sagemaker:pipeline-execution-arn"
#: Our tags on an execution's parent run (the local executor's parent run carries the same).
EXECUTION_ARN_TAG = "sagemaker.pipeline_execution_arn"
EXECUTION_ID_TAG = "sagemaker.pipeline_execution_id"
PIPELINE_NAME_TAG = "sagemaker.pipeline_name"
#: How long a job that created a parent run waits before it looks again for one created at the same moment by a
#: parallel job (tuning trials start together): every job then sees every run created before its own look.
SETTLE_SECONDS = 1.0


def pipeline_execution_arn(job_arn: str) -> str | None:
    """The ARN of the pipeline execution that started the job ``job_arn`` (a training or processing job ARN), read
    from the job's tags (a tuning trial without the tag: from its tuning job's); None for a job started outside a
    pipeline. Raises botocore's errors (no credentials, access denied)."""
    import boto3

    region = job_arn.split(":")[3]
    # a session per call: boto3's default session is not safe to share between threads
    sagemaker = boto3.session.Session().client("sagemaker", region_name=region)
    tags = _tags(sagemaker, job_arn)
    if PIPELINE_EXECUTION_TAG not in tags and ":training-job/" in job_arn:
        described = sagemaker.describe_training_job(TrainingJobName=job_arn.rsplit("/", 1)[1])
        if described.get("TuningJobArn"):
            tags = _tags(sagemaker, described["TuningJobArn"])
    return tags.get(PIPELINE_EXECUTION_TAG)


def _tags(sagemaker: Any, arn: str) -> dict[str, str]:
    found = {}
    for page in sagemaker.get_paginator("list_tags").paginate(ResourceArn=arn):
        found.update({tag["Key"]: tag["Value"] for tag in page.get("Tags", [])})
    return found


def execution_tags(execution_arn: str) -> dict[str, str]:
    """The parent run's identifying tags and ``mlflow.runName`` (``<pipeline>-<execution id>``, as in local mode),
    from an execution ARN ``arn:aws:sagemaker:<region>:<account>:pipeline/<pipeline>/execution/<id>``."""
    resource = execution_arn.split(":", 5)[-1]  # pipeline/<pipeline>/execution/<id>
    parts = resource.split("/")
    pipeline, execution_id = (parts[1], parts[3]) if len(parts) == 4 else ("pipeline", resource)
    return {EXECUTION_ARN_TAG: execution_arn, EXECUTION_ID_TAG: execution_id, PIPELINE_NAME_TAG: pipeline,
            "mlflow.runName": f"{pipeline}-{execution_id}"}  # fmt: skip


def execution_runs(client: Any, experiment_id: str, execution_arn: str) -> list:
    """The experiment's live runs tagged with ``execution_arn``, earliest first (start time, then run id)."""
    found = client.search_runs([experiment_id], filter_string=f"tags.`{EXECUTION_ARN_TAG}` = '{execution_arn}'",
                               max_results=100)  # fmt: skip
    return sorted(found, key=lambda run: (run.info.start_time, run.info.run_id))


def find_or_create(client: Any, experiment_id: str, execution_arn: str, settle: float = SETTLE_SECONDS) -> str:
    """The id of the parent run of ``execution_arn`` in ``experiment_id``: the earliest existing one, or one created
    now. Parallel jobs that all find none each create one, wait ``settle`` seconds, look again and agree on the
    earliest; the others delete the run they created (a failed delete leaves an empty duplicate run, never a
    failed job)."""
    existing = execution_runs(client, experiment_id, execution_arn)
    if existing:
        return existing[0].info.run_id
    tags = execution_tags(execution_arn)
    created = client.create_run(experiment_id, tags=tags, run_name=tags["mlflow.runName"]).info.run_id
    time.sleep(settle)
    runs = execution_runs(client, experiment_id, execution_arn)
    winner = runs[0].info.run_id if runs else created
    if winner != created:
        with contextlib.suppress(Exception):  # an empty duplicate parent is harmless; the job goes on
            client.delete_run(created)
    return winner
