"""Lambda handler that deploys a model package to a stage endpoint (staging or production), safely.

Invoked three ways with the same event: by the pipeline's ``deploy`` LambdaStep, by the EventBridge rule on
"SageMaker Model Package State Change" (ModelApprovalStatus Approved) that ``upsert`` creates (its input
transformer puts the package ARN into the staging event), and by ``python -m pipeline promote`` (production).

Event::

    {"model_package_arn": "arn:aws:sagemaker:<region>:<account>:model-package/<group>/<version>",
     "endpoint_name": "image-classification-staging", "instance_type": "ml.m5.large",
     "initial_instance_count": 1, "role_arn": "arn:aws:iam::<account>:role/<model execution role>",
     "network_isolation": "false", "kms_key_id": "<optional>", "subnets": "<optional, comma-separated>",
     "security_group_ids": "<optional, comma-separated>",
     "data_capture_uri": "<optional s3://...>", "data_capture_percent": 100,
     "canary_percent": 10, "wait_interval_s": 300, "termination_wait_s": 0, "max_model_latency_ms": 2000}

Returns ``{"statusCode": 200, "endpoint_name", "status", "reason", "model_name", "endpoint_config_name"}`` where
``status`` is the endpoint's real outcome when it ends while the function may still run: ``InService`` (the new
model serves), ``RolledBack`` (the update failed or its alarms fired; the old model serves), ``Failed``; else
``Creating``/``Updating`` (still in progress when the function had to return). ``Unchanged``: the endpoint already
serves the package's model artifacts (same ModelDataUrl). ``Skipped``: the package is not Approved.

Safety, as SageMaker's deployment guardrails provide it (https://docs.aws.amazon.com/sagemaker/latest/dg/
deployment-guardrails.html): updates are blue/green with canary traffic shifting (``DeploymentConfig.
BlueGreenUpdatePolicy``, TrafficRoutingConfiguration ``CANARY`` with CanarySize ``CAPACITY_PERCENT``,
https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_DeploymentConfig.html) and roll back automatically
when either of two CloudWatch alarms this function creates fires (``AutoRollbackConfiguration.Alarms``): 5xx
errors of the endpoint's variant, and its model latency above ``max_model_latency_ms``. An endpoint that is not
InService is not updated (UpdateEndpoint fails on it): the function raises, so the pipeline step fails with that
message, and an invocation from the rule is retried by Lambda (asynchronous invocations are retried twice,
https://docs.aws.amazon.com/lambda/latest/dg/invocation-async-error-handling.html).

The endpoint config captures requests and responses when ``data_capture_uri`` is given (``DataCaptureConfig``,
https://docs.aws.amazon.com/sagemaker/latest/dg/model-monitor-data-capture-endpoint.html): JSON Lines under
``<uri>/<endpoint>/<variant>/yyyy/mm/dd/hh/``, responses as text (``application/json``), images base64.

The pipeline does not trust a Lambda's 15 minutes to see a blue/green update end. Its ``deploy`` step passes
``"wait_for_outcome": "false"`` and returns at once; the ``endpoint_outcome`` CallbackStep after it sends one SQS
message per deployment to the queue ``upsert`` creates, and this function, triggered by that queue (an event source
mapping), answers the step with SendPipelineExecutionStepSuccess (InService, Unchanged, Skipped) or
SendPipelineExecutionStepFailure (RolledBack, Failed, OutOfService, with the reason): see :func:`complete_callbacks`.
A message about an endpoint still in progress is returned to the queue to be looked at again in
:data:`RECHECK_S` seconds.

Names are derived from the package version, so a retry of the same event reuses what the first try created:
model ``<endpoint>-v<version>``, endpoint config ``<endpoint>-v<version>-<hash of the config's settings>``.
boto3 only (it is in the Lambda runtime); nothing else from this repository is imported.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

log = logging.getLogger()
log.setLevel(logging.INFO)

REQUIRED = ("model_package_arn", "endpoint_name", "instance_type", "role_arn")
#: botocore's standard retry mode: throttling and transient errors retried with exponential backoff.
RETRY_CONFIG = Config(retries={"mode": "standard", "total_max_attempts": 5})
VARIANT = "AllTraffic"
#: DescribeEndpoint statuses in which UpdateEndpoint is refused
#: (https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_DescribeEndpoint.html#sagemaker-DescribeEndpoint-response-EndpointStatus).
BUSY = ("Creating", "Updating", "SystemUpdating", "RollingBack", "Deleting", "UpdateRollbackFailed")
#: Seconds kept back from the Lambda's time limit to answer after waiting for the outcome.
ANSWER_MARGIN_S = 20.0
POLL_S = 15.0
#: Seconds until an SQS message about an endpoint still being created or updated is delivered again.
RECHECK_S = 60
#: Outcomes that end the pipeline's callback step: with success, or with failure (FailureReason: the reason).
SUCCEEDED_OUTCOMES = ("InService", "Unchanged", "Skipped")
FAILED_OUTCOMES = ("RolledBack", "Failed", "OutOfService")
#: A step's token no longer waited for (the execution was stopped, or the step already answered): the message is
#: dropped. SendPipelineExecutionStepSuccess/Failure errors (API reference of both calls).
_STALE_TOKEN_ERRORS = ("ResourceNotFound", "ConflictException", "ValidationException")


class EndpointBusyError(RuntimeError):
    """The endpoint is being created, updated or deleted: it cannot be updated now."""


def _csv(value) -> list[str]:
    return [item.strip() for item in str(value or "").split(",") if item.strip()]


def _missing(error: ClientError) -> bool:
    message = error.response.get("Error", {}).get("Message", "").lower()
    return error.response.get("Error", {}).get("Code") in ("ValidationException", "ResourceNotFound") and (
        "could not find" in message or "not found" in message or "does not exist" in message
    )


def alarm_names(endpoint: str) -> list[str]:
    """The CloudWatch alarms that roll back ``endpoint``'s updates: 5xx errors, model latency."""
    return [f"{endpoint}-invocation-5xx", f"{endpoint}-model-latency"]


def _capture(event: dict) -> dict:
    if not event.get("data_capture_uri"):
        return {}
    config = {
        "EnableCapture": True,
        "InitialSamplingPercentage": int(event.get("data_capture_percent", 100)),
        "DestinationS3Uri": event["data_capture_uri"],
        "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
        "CaptureContentTypeHeader": {"JsonContentTypes": ["application/json"]},
    }
    if event.get("kms_key_id"):
        config["KmsKeyId"] = event["kms_key_id"]
    return {"DataCaptureConfig": config}


def _names(event: dict, version: str) -> tuple[str, str]:
    endpoint = event["endpoint_name"]
    shape = f"{event['instance_type']}:{int(event.get('initial_instance_count', 1))}"
    settings = json.dumps(_capture(event), sort_keys=True)
    digest = hashlib.sha256(f"{event['model_package_arn']}|{shape}|{settings}".encode()).hexdigest()[:8]
    return f"{endpoint}-v{version}"[:63], f"{endpoint}-v{version}-{digest}"[:63]


def _model_data_url(package: dict) -> str | None:
    containers = (package.get("InferenceSpecification") or {}).get("Containers") or [{}]
    return containers[0].get("ModelDataUrl")


def served_package(sagemaker, endpoint: dict) -> dict | None:
    """DescribeModelPackage of the package ``endpoint`` serves (endpoint config -> model -> package), or None."""
    try:
        config = sagemaker.describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])
        model = sagemaker.describe_model(ModelName=config["ProductionVariants"][0]["ModelName"])
        containers = model.get("Containers") or [model.get("PrimaryContainer") or {}]
        name = containers[0].get("ModelPackageName")
        return sagemaker.describe_model_package(ModelPackageName=name) if name else None
    except ClientError as error:
        if _missing(error):
            return None
        raise


def put_alarms(cloudwatch, event: dict) -> list[str]:
    """Create or update the endpoint's rollback alarms (PutMetricAlarm is an upsert); returns their names.

    Metrics from https://docs.aws.amazon.com/sagemaker/latest/dg/monitoring-cloudwatch.html: ``Invocation5XXErrors``
    (count) and ``ModelLatency`` (microseconds), namespace ``AWS/SageMaker``, dimensions EndpointName and
    VariantName, one-minute periods.
    """
    endpoint = event["endpoint_name"]
    dimensions = [{"Name": "EndpointName", "Value": endpoint}, {"Name": "VariantName", "Value": VARIANT}]
    errors, latency = alarm_names(endpoint)
    common = {"Namespace": "AWS/SageMaker", "Dimensions": dimensions, "Period": 60,
              "TreatMissingData": "notBreaching", "ComparisonOperator": "GreaterThanThreshold"}  # fmt: skip
    cloudwatch.put_metric_alarm(AlarmName=errors, MetricName="Invocation5XXErrors", Statistic="Sum", Threshold=0,
                                EvaluationPeriods=1, AlarmDescription=f"5xx errors of {endpoint}: rolls back its "
                                "update", **common)  # fmt: skip
    cloudwatch.put_metric_alarm(AlarmName=latency, MetricName="ModelLatency", Statistic="Average",
                                Threshold=float(event.get("max_model_latency_ms", 2000)) * 1000, EvaluationPeriods=2,
                                AlarmDescription=f"model latency of {endpoint}: rolls back its update",
                                **common)  # fmt: skip
    return [errors, latency]


def deployment_config(event: dict) -> dict:
    """UpdateEndpoint's DeploymentConfig: blue/green, canary first, rolled back by the endpoint's alarms."""
    return {
        "BlueGreenUpdatePolicy": {
            "TrafficRoutingConfiguration": {
                "Type": "CANARY",
                "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": int(event.get("canary_percent", 10))},
                "WaitIntervalInSeconds": int(event.get("wait_interval_s", 300)),
            },
            "TerminationWaitInSeconds": int(event.get("termination_wait_s", 0)),
        },
        "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": name} for name in alarm_names(event["endpoint_name"])]},
    }


def wait_for_outcome(sagemaker, endpoint: str, config_name: str, wait_s: float) -> tuple[str, str | None]:
    """Poll DescribeEndpoint for at most ``wait_s`` seconds: ``(status, reason)``.

    ``InService`` on the new endpoint config is success; ``InService`` on another config is a rollback (the
    endpoint went back to the config it served); ``Failed`` carries its FailureReason; a status still in progress
    when the time is up is returned as it is.
    """
    deadline = time.monotonic() + wait_s
    while True:
        described = sagemaker.describe_endpoint(EndpointName=endpoint)
        status, reason = described["EndpointStatus"], described.get("FailureReason")
        if status == "InService":
            if described.get("EndpointConfigName") == config_name:
                return "InService", None
            return "RolledBack", reason or "the update was rolled back (an alarm fired or the new fleet failed)"
        if status in ("Failed", "UpdateRollbackFailed", "OutOfService"):
            return ("Failed" if status != "OutOfService" else status), reason
        if time.monotonic() + POLL_S > deadline:
            return status, "still in progress when the function had to return; python -m pipeline endpoints follows it"
        time.sleep(POLL_S)


def deploy(event: dict, sagemaker=None, cloudwatch=None, wait_s: float = 0.0) -> dict:
    """Deploy ``event``'s model package to its endpoint; see the module docstring. Waits at most ``wait_s`` s.

    Raises:
        ValueError: a required key is missing (the step fails with that message).
        EndpointBusyError: the endpoint is not InService (being created, updated, rolled back or deleted).
    """
    missing = [key for key in REQUIRED if not event.get(key)]
    if missing:
        raise ValueError(f"deploy event lacks {', '.join(missing)}")
    sagemaker = sagemaker or boto3.client("sagemaker", config=RETRY_CONFIG)
    cloudwatch = cloudwatch or boto3.client("cloudwatch", config=RETRY_CONFIG)
    package = sagemaker.describe_model_package(ModelPackageName=event["model_package_arn"])
    endpoint = event["endpoint_name"]
    result = {"statusCode": 200, "endpoint_name": endpoint, "model_name": None, "endpoint_config_name": None,
              "reason": None}  # fmt: skip
    approval = package.get("ModelApprovalStatus")
    if approval != "Approved":
        log.info("model package %s is %s: not deployed", event["model_package_arn"], approval)
        return {**result, "status": "Skipped", "reason": f"model package approval status is {approval}, not Approved"}
    try:
        current = sagemaker.describe_endpoint(EndpointName=endpoint)
    except ClientError as error:
        if not _missing(error):
            raise
        current = None
    if current is not None:
        if current["EndpointStatus"] in BUSY:
            raise EndpointBusyError(f"endpoint {endpoint} is {current['EndpointStatus']}: not updated now; it is "
                                    "retried (approval rule) or run the step again when the endpoint is InService")
        served = served_package(sagemaker, current)
        if served is not None and _model_data_url(served) == _model_data_url(package):
            reason = f"{endpoint} already serves these model artifacts ({served['ModelPackageArn']})"
            log.info(reason)
            return {**result, "status": "Unchanged", "reason": reason,
                    "endpoint_config_name": current["EndpointConfigName"]}
    version = str(package.get("ModelPackageVersion") or event["model_package_arn"].rsplit("/", 1)[-1])
    model_name, config_name = _names(event, version)
    result.update(model_name=model_name, endpoint_config_name=config_name)
    try:
        sagemaker.describe_model(ModelName=model_name)
    except ClientError as error:
        if not _missing(error):
            raise
        isolated = str(event.get("network_isolation", "false")).lower() == "true"
        model_security: dict = {"EnableNetworkIsolation": isolated}
        if _csv(event.get("subnets")):
            model_security["VpcConfig"] = {"Subnets": _csv(event["subnets"]),
                                           "SecurityGroupIds": _csv(event.get("security_group_ids"))}
        sagemaker.create_model(
            ModelName=model_name,
            ExecutionRoleArn=event["role_arn"],
            Containers=[{"ModelPackageName": event["model_package_arn"]}],
            **model_security,
        )
    try:
        sagemaker.describe_endpoint_config(EndpointConfigName=config_name)
    except ClientError as error:
        if not _missing(error):
            raise
        volume_key = {"KmsKeyId": event["kms_key_id"]} if event.get("kms_key_id") else {}
        sagemaker.create_endpoint_config(
            EndpointConfigName=config_name,
            **volume_key,
            **_capture(event),
            ProductionVariants=[{
                "VariantName": VARIANT,
                "ModelName": model_name,
                "InstanceType": event["instance_type"],
                "InitialInstanceCount": int(event.get("initial_instance_count", 1)),
            }],
        )  # fmt: skip
    if current is not None and current.get("EndpointConfigName") == config_name:
        return {**result, "status": "Unchanged", "reason": f"{endpoint} already uses {config_name}"}
    put_alarms(cloudwatch, event)  # before the update that they guard (and the next one, after a create)
    if current is None:
        sagemaker.create_endpoint(EndpointName=endpoint, EndpointConfigName=config_name)
        status = "Creating"
    else:
        sagemaker.update_endpoint(EndpointName=endpoint, EndpointConfigName=config_name,
                                  DeploymentConfig=deployment_config(event))  # fmt: skip
        status = "Updating"
    log.info("endpoint %s: %s with %s", endpoint, status, config_name)
    if wait_s > 0:
        status, reason = wait_for_outcome(sagemaker, endpoint, config_name, wait_s)
        result["reason"] = reason
    return {**result, "status": status}


def outcome(sagemaker, arguments: dict) -> tuple[str, str | None]:
    """The outcome of the deployment the ``deploy`` step reported in ``arguments`` (its outputs ``status``,
    ``reason``, ``endpoint_name``, ``endpoint_config_name``): ``(status, reason)``.

    ``Unchanged`` and ``Skipped`` are final as reported; otherwise the endpoint is described once (see
    :func:`wait_for_outcome`): a status outside :data:`SUCCEEDED_OUTCOMES` and :data:`FAILED_OUTCOMES` is still
    in progress.
    """
    if arguments.get("status") in ("Unchanged", "Skipped"):
        return arguments["status"], arguments.get("reason") or None
    return wait_for_outcome(sagemaker, arguments["endpoint_name"], arguments["endpoint_config_name"], 0.0)


def callback_verdict(endpoint: str | None, status: str, reason: str | None) -> tuple[bool | None, str]:
    """How the ``endpoint_outcome`` callback step ends for a deployment in ``status``: ``(True, "")`` succeeds,
    ``(False, <FailureReason>)`` fails (at most 256 characters, SendPipelineExecutionStepFailure's limit),
    ``(None, "")`` is still in progress. The one rule of the AWS function and of local mode."""
    if status in SUCCEEDED_OUTCOMES:
        return True, ""
    if status in FAILED_OUTCOMES:
        return False, f"endpoint {endpoint} {status}: {reason or ''}"[:256]
    return None, ""


def complete_callbacks(event: dict, sagemaker=None, sqs=None) -> dict:
    """Answer the pipeline's ``endpoint_outcome`` callback step for each SQS record of ``event``.

    Each record's body is the message SageMaker Pipelines sends for a callback step: ``{"token": <10
    characters>, "pipelineExecutionArn", "status", "arguments": {<the step's inputs>}}`` (AWS blog "Extend
    Amazon SageMaker Pipelines to include custom steps using callback steps"; CallbackToken: API reference of
    SendPipelineExecutionStepSuccess). Finished deployments are answered (outputs ``status`` and ``reason``);
    the others are made visible again in :data:`RECHECK_S` seconds and listed as failed items, so that SQS
    delivers them again (``ReportBatchItemFailures``, https://docs.aws.amazon.com/lambda/latest/dg/
    services-sqs-errorhandling.html). Returns ``{"batchItemFailures": [{"itemIdentifier": <message id>}]}``.
    """
    sagemaker = sagemaker or boto3.client("sagemaker", config=RETRY_CONFIG)
    sqs = sqs or boto3.client("sqs", config=RETRY_CONFIG)
    again = []
    for record in event.get("Records", []):
        message = json.loads(record["body"])
        token, arguments = message["token"], message.get("arguments") or {}
        status, reason = outcome(sagemaker, arguments)
        endpoint = arguments.get("endpoint_name")
        succeeded, failure_reason = callback_verdict(endpoint, status, reason)
        try:
            if succeeded:
                sagemaker.send_pipeline_execution_step_success(
                    CallbackToken=token, OutputParameters=[{"Name": "status", "Value": status},
                                                           {"Name": "reason", "Value": (reason or "")[:1024]}])
                log.info("endpoint %s: %s (callback %s answered)", endpoint, status, token)
            elif succeeded is False:
                sagemaker.send_pipeline_execution_step_failure(CallbackToken=token, FailureReason=failure_reason)
                log.info("endpoint %s: %s (callback %s failed)", endpoint, status, token)
            else:
                account, queue = record["eventSourceARN"].split(":")[4:6]
                url = sqs.get_queue_url(QueueName=queue, QueueOwnerAWSAccountId=account)["QueueUrl"]
                sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=record["receiptHandle"],
                                              VisibilityTimeout=RECHECK_S)  # fmt: skip
                again.append({"itemIdentifier": record["messageId"]})
                log.info("endpoint %s is %s: looked at again in %d s", endpoint, status, RECHECK_S)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") not in _STALE_TOKEN_ERRORS:
                raise
            log.warning("callback %s of %s is no longer waited for: %s", token, message.get("pipelineExecutionArn"),
                        error)  # fmt: skip
    return {"batchItemFailures": again}


def handler(event, context):
    """AWS Lambda entry point (``deploy_endpoint.handler``).

    SQS records (the callback queue): :func:`complete_callbacks`. A deploy event: :func:`deploy`, waiting for the
    endpoint's outcome while the function has time left (its timeout less :data:`ANSWER_MARGIN_S`), unless the
    event says ``"wait_for_outcome": "false"`` (the pipeline's step, whose callback step waits instead).
    """
    if any(record.get("eventSource") == "aws:sqs" for record in event.get("Records", [])):
        return complete_callbacks(event)
    remaining = context.get_remaining_time_in_millis() / 1000 if context is not None else 0.0
    waits = str(event.get("wait_for_outcome", "true")).lower() != "false"
    result = deploy(event, wait_s=max(0.0, remaining - ANSWER_MARGIN_S) if waits else 0.0)
    # The LambdaStep's outputs are strings (OutputParameter.Value: a string of 0 to 1024 characters)
    return {key: "" if value is None else value for key, value in result.items()}
