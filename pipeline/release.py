"""From approval to production in AWS: approval, the rules that act on it, promotion, notifications, clean-up.

- :func:`set_approval`: UpdateModelPackage with ModelApprovalStatus and ApprovalDescription
  (https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_UpdateModelPackage.html).
- :func:`upsert_rules` (called by ``upsert``): the EventBridge rule ``<pipeline>-approved`` on "SageMaker Model
  Package State Change" events of this model package group with ModelApprovalStatus Approved (event shape:
  https://docs.aws.amazon.com/sagemaker/latest/dg/automating-sagemaker-with-eventbridge.html#eventbridge-model-package),
  targeting the deploy Lambda with the staging event (an input transformer puts ``$.detail.ModelPackageArn`` into
  it) and the Lambda permission that lets ``events.amazonaws.com`` invoke it from that rule only. With
  ``notifications.topic_arn``: rules sending to the SNS topic the pipeline's executions that Failed or Stopped
  ("SageMaker Model Building Pipeline Execution Status Change", ``currentPipelineExecutionStatus``) and the stage
  endpoints' failures and rollbacks ("SageMaker Endpoint State Change" ``EndpointStatus`` FAILED and "SageMaker
  Endpoint Deployment State Change" ``EndpointStatus`` ROLLING_BACK/FAILED; the documented examples write the
  status in capitals, e.g. IN_SERVICE, UPDATING), and a topic policy statement letting EventBridge publish.
- :func:`delete_release` (called by ``teardown``): the rules, their targets, the Lambda permission, the endpoints'
  alarms, and both stage endpoints with their configs and models.
- :func:`promote`: smoke test on staging (InvokeEndpoint with the test images), then the deploy Lambda invoked for
  production (RequestResponse: its answer is the endpoint's outcome).
"""

from __future__ import annotations

import json
from pathlib import Path

from botocore.exceptions import ClientError

from pipeline.config import Config
from pipeline.errors import UserError
from pipeline.instances import volume_kms_key

STAGES = ("staging", "production")
MODEL_PACKAGE_EVENT = "SageMaker Model Package State Change"
PIPELINE_EVENT = "SageMaker Model Building Pipeline Execution Status Change"
ENDPOINT_EVENT = "SageMaker Endpoint State Change"
DEPLOYMENT_EVENT = "SageMaker Endpoint Deployment State Change"
APPROVAL_TARGET_ID = "deploy-staging"
NOTIFY_TARGET_ID = "notify"


def stage_event(config: Config, stage: str) -> dict:
    """The deploy Lambda's event for ``stage`` without ``model_package_arn`` (entrypoints/deploy_endpoint.py)."""
    target = getattr(config.deploy.stages, stage)
    security, rollout, capture = config.security, config.deploy.rollout, config.deploy.data_capture
    event = {
        "endpoint_name": target.endpoint_name,
        "instance_type": target.instance_type,
        "initial_instance_count": target.initial_instance_count,
        "role_arn": config.role_arn,
        # The endpoint gets the same protections as the jobs: its volume key, VPC and network isolation.
        "network_isolation": "true" if security.enable_network_isolation else "false",
        "canary_percent": rollout.canary_percent,
        "wait_interval_s": rollout.wait_interval_s,
        "termination_wait_s": rollout.termination_wait_s,
        "max_model_latency_ms": rollout.max_model_latency_ms,
    }
    # CreateEndpointConfig takes no KmsKeyId for instance types with local storage (pipeline.instances)
    kms_key_id = volume_kms_key(target.instance_type, security.kms_key_id)
    if kms_key_id:
        event["kms_key_id"] = kms_key_id
    if security.subnets:
        event["subnets"] = ",".join(security.subnets)
        event["security_group_ids"] = ",".join(security.security_group_ids)
    if capture.enabled and capture.sampling_percentage > 0:
        event["data_capture_uri"] = config.s3_uri(capture.s3_prefix)
        event["data_capture_percent"] = capture.sampling_percentage
    return event


def outcome_queue_name(config: Config) -> str:
    """The SQS queue of the pipeline's ``endpoint_outcome`` callback step: ``<deploy function>-outcomes``."""
    return f"{config.deploy.lambda_function_name[:71]}-outcomes"


def outcome_queue_url(config: Config) -> str:
    """The queue's URL, ``https://sqs.<region>.amazonaws.com/<account>/<name>`` (the account read from the role
    ARN: no STS call, the definition stays offline)."""
    _, account = _account(config)
    return f"https://sqs.{config.region}.amazonaws.com/{account}/{outcome_queue_name(config)}"


#: The callback queue's attributes. Retention: SQS's maximum, 14 days (a callback step waits for its answer up to
#: 7 days). Visibility: six times the function's timeout, as AWS recommends for a queue that triggers a function
#: (https://docs.aws.amazon.com/lambda/latest/dg/services-sqs-configure.html); the function makes a message about
#: an endpoint still in progress visible again sooner (deploy_endpoint.RECHECK_S).
OUTCOME_QUEUE_RETENTION_S = 14 * 24 * 3600
#: GetQueueUrl's error codes for a queue that does not exist (the query and the JSON protocol's names).
MISSING_QUEUE_CODES = ("AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist")


def upsert_outcome_queue(config: Config, session, function_arn: str) -> str:
    """Create the callback queue (or set its attributes) and the deploy function's event source mapping on it
    (batch size 1, ``ReportBatchItemFailures``); returns the queue URL. Safe to run again."""
    from pipeline.aws import aws_errors, client

    sqs = client(session, "sqs")
    lam = client(session, "lambda")
    name = outcome_queue_name(config)
    attributes = {"MessageRetentionPeriod": str(OUTCOME_QUEUE_RETENTION_S),
                  "VisibilityTimeout": str(6 * config.deploy.lambda_timeout_s)}  # fmt: skip
    if config.security.kms_key_id:
        attributes["KmsMasterKeyId"] = config.security.kms_key_id
    else:
        attributes["SqsManagedSseEnabled"] = "true"
    with aws_errors(f"creating SQS queue {name}"):
        try:
            url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
            sqs.set_queue_attributes(QueueUrl=url, Attributes=attributes)
        except ClientError as error:
            if _code(error) not in MISSING_QUEUE_CODES:
                raise
            url = sqs.create_queue(QueueName=name, Attributes=attributes, tags=dict(config.tags))["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    with aws_errors(f"connecting SQS queue {name} to {config.deploy.lambda_function_name}"):
        mappings = lam.list_event_source_mappings(EventSourceArn=queue_arn).get("EventSourceMappings", [])
        if not any(m.get("FunctionArn", "").split(":$")[0] == function_arn.split(":$")[0] for m in mappings):
            lam.create_event_source_mapping(EventSourceArn=queue_arn, FunctionName=function_arn, BatchSize=1,
                                            FunctionResponseTypes=["ReportBatchItemFailures"])  # fmt: skip
    return url


def delete_outcome_queue(config: Config, session) -> list[str]:
    """Delete the deploy function's event source mappings on the callback queue, then the queue."""
    from pipeline.aws import aws_errors, client

    sqs = client(session, "sqs")
    lam = client(session, "lambda")
    deleted: list[str] = []
    name = outcome_queue_name(config)
    with aws_errors(f"deleting SQS queue {name}"):
        try:
            url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
        except ClientError as error:
            if _code(error) not in MISSING_QUEUE_CODES:
                raise
            return deleted
        queue_arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        for mapping in lam.list_event_source_mappings(EventSourceArn=queue_arn).get("EventSourceMappings", []):
            lam.delete_event_source_mapping(UUID=mapping["UUID"])
            deleted.append(f"event source mapping {mapping['UUID']}")
        sqs.delete_queue(QueueUrl=url)
        deleted.append(f"queue {name}")
    return deleted


def rule_names(config: Config) -> dict[str, str]:
    """``{"approval", "pipeline_failed", "endpoint_failed"}`` -> rule name (EventBridge: at most 64 characters)."""
    base = config.pipeline_name[:48]
    return {"approval": f"{base}-approved", "pipeline_failed": f"{base}-pipeline-failed",
            "endpoint_failed": f"{base}-endpoint-failed"}  # fmt: skip


def approval_pattern(config: Config) -> dict:
    return {"source": ["aws.sagemaker"], "detail-type": [MODEL_PACKAGE_EVENT],
            "detail": {"ModelPackageGroupName": [config.model_package_group], "ModelApprovalStatus": ["Approved"]}}


def _account(config: Config) -> tuple[str, str]:
    parts = config.role_arn.split(":")
    return parts[1], parts[4]


def notification_patterns(config: Config) -> dict[str, dict]:
    """``{"pipeline_failed", "endpoint_failed"}`` -> event pattern. The pipeline ARN is matched ignoring case
    (``equals-ignore-case``, https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-create-pattern-operators.html):
    the documented events show it in the pipeline name's case, SageMaker's other ARNs lower-case it."""
    partition, account = _account(config)
    pipeline_arn = f"arn:{partition}:sagemaker:{config.region}:{account}:pipeline/{config.pipeline_name}"
    endpoints = [getattr(config.deploy.stages, s).endpoint_name for s in STAGES]
    return {
        "pipeline_failed": {"source": ["aws.sagemaker"], "detail-type": [PIPELINE_EVENT],
                            "detail": {"pipelineArn": [{"equals-ignore-case": pipeline_arn}],
                                       "currentPipelineExecutionStatus": ["Failed", "Stopped"]}},
        "endpoint_failed": {"source": ["aws.sagemaker"], "detail-type": [ENDPOINT_EVENT, DEPLOYMENT_EVENT],
                            "detail": {"EndpointName": endpoints,
                                       "EndpointStatus": ["FAILED", "ROLLING_BACK", "UPDATE_ROLLBACK_FAILED"]}},
    }  # fmt: skip


def _input_template(config: Config) -> str:
    """The approval rule's InputTemplate: the staging event with ``<arn>`` replaced by the package ARN."""
    event = {"model_package_arn": "ARN_PLACEHOLDER", **stage_event(config, "staging")}
    # EventBridge substitutes <arn> inside a quoted JSON string when the template is JSON.
    return json.dumps(event, sort_keys=True).replace("ARN_PLACEHOLDER", "<arn>")


def _not_found(error: ClientError) -> bool:
    from pipeline.aws import _not_found as not_found

    return not_found(error)


def _code(error: ClientError) -> str:
    return error.response.get("Error", {}).get("Code", "")


def upsert_rules(config: Config, session, function_arn: str | None) -> list[str]:
    """Create or update the approval rule (when the deploy Lambda exists) and the notification rules (when
    ``notifications.topic_arn`` is set); returns the rule ARNs. Safe to run again."""
    from pipeline.aws import _tags, aws_errors, client

    events = client(session, "events")
    names, arns = rule_names(config), []
    tags = _tags(config)
    if function_arn:
        with aws_errors(f"creating EventBridge rule {names['approval']}"):
            rule_arn = events.put_rule(Name=names["approval"], EventPattern=json.dumps(approval_pattern(config)),
                                       State="ENABLED", Tags=tags,
                                       Description=f"Approved versions of {config.model_package_group} -> deploy to "
                                                   f"{config.deploy.stages.staging.endpoint_name}")["RuleArn"]
            events.put_targets(Rule=names["approval"], Targets=[{
                "Id": APPROVAL_TARGET_ID, "Arn": function_arn,
                "InputTransformer": {"InputPathsMap": {"arn": "$.detail.ModelPackageArn"},
                                     "InputTemplate": _input_template(config)}}])  # fmt: skip
            lam = client(session, "lambda")
            statement = f"{names['approval']}-invoke"
            try:
                lam.add_permission(FunctionName=config.deploy.lambda_function_name, StatementId=statement,
                                   Action="lambda:InvokeFunction", Principal="events.amazonaws.com",
                                   SourceArn=rule_arn)  # fmt: skip
            except ClientError as error:
                if _code(error) != "ResourceConflictException":  # the statement is there from an earlier upsert
                    raise
            arns.append(rule_arn)
    topic = config.notifications.topic_arn
    if topic:
        for key, pattern in notification_patterns(config).items():
            with aws_errors(f"creating EventBridge rule {names[key]}"):
                arns.append(events.put_rule(Name=names[key], EventPattern=json.dumps(pattern), State="ENABLED",
                                            Tags=tags, Description=f"{key.replace('_', ' ')} -> {topic}")["RuleArn"])
                events.put_targets(Rule=names[key], Targets=[{"Id": NOTIFY_TARGET_ID, "Arn": topic}])
        with aws_errors(f"allowing EventBridge to publish to {topic}"):
            _allow_events_to_publish(client(session, "sns"), topic, arns[-2:])
    return arns


def _allow_events_to_publish(sns, topic: str, rule_arns: list[str]) -> None:
    """Add (once) a topic policy statement letting EventBridge publish for these rules
    (https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-use-resource-based.html#eb-sns-permissions)."""
    attributes = sns.get_topic_attributes(TopicArn=topic)["Attributes"]
    policy = json.loads(attributes.get("Policy") or '{"Version": "2012-10-17", "Statement": []}')
    sid = "AllowImageClassificationRulesToPublish"
    policy["Statement"] = [s for s in policy.get("Statement", []) if s.get("Sid") != sid] + [{
        "Sid": sid, "Effect": "Allow", "Principal": {"Service": "events.amazonaws.com"},
        "Action": "sns:Publish", "Resource": topic, "Condition": {"ArnEquals": {"aws:SourceArn": rule_arns}}}]
    sns.set_topic_attributes(TopicArn=topic, AttributeName="Policy", AttributeValue=json.dumps(policy))


def delete_rules(config: Config, session) -> list[str]:
    """Delete this pipeline's rules (targets first) and the Lambda permission; returns what was deleted."""
    from pipeline.aws import aws_errors, client

    events, deleted = client(session, "events"), []
    for key, name in rule_names(config).items():
        with aws_errors(f"deleting EventBridge rule {name}"):
            try:
                targets = [t["Id"] for t in events.list_targets_by_rule(Rule=name).get("Targets", [])]
                if targets:
                    events.remove_targets(Rule=name, Ids=targets)
                events.delete_rule(Name=name)
                deleted.append(f"rule {name}")
            except ClientError as error:
                if not _not_found(error):
                    raise
        if key == "approval":
            with aws_errors(f"removing the invoke permission of {config.deploy.lambda_function_name}"):
                try:
                    client(session, "lambda").remove_permission(FunctionName=config.deploy.lambda_function_name,
                                                                StatementId=f"{name}-invoke")
                    deleted.append(f"permission {name}-invoke")
                except ClientError as error:
                    if not _not_found(error):
                        raise
    return deleted


def delete_endpoints(config: Config, session) -> list[str]:
    """Delete both stage endpoints, their endpoint configs, models (``<endpoint>-v...``) and rollback alarms."""
    from pipeline.aws import aws_errors, client

    sm, deleted = client(session, "sagemaker"), []
    for stage in STAGES:
        endpoint = getattr(config.deploy.stages, stage).endpoint_name
        with aws_errors(f"deleting endpoint {endpoint}"):
            try:
                sm.delete_endpoint(EndpointName=endpoint)
                deleted.append(f"endpoint {endpoint}")
            except ClientError as error:
                if not _not_found(error):
                    raise
            for page in sm.get_paginator("list_endpoint_configs").paginate(NameContains=endpoint):
                for item in page["EndpointConfigs"]:
                    if item["EndpointConfigName"].startswith(f"{endpoint}-v"):
                        sm.delete_endpoint_config(EndpointConfigName=item["EndpointConfigName"])
                        deleted.append(f"endpoint config {item['EndpointConfigName']}")
            for page in sm.get_paginator("list_models").paginate(NameContains=endpoint):
                for item in page["Models"]:
                    if item["ModelName"].startswith(f"{endpoint}-v"):
                        sm.delete_model(ModelName=item["ModelName"])
                        deleted.append(f"model {item['ModelName']}")
        names = _alarm_names(endpoint)
        with aws_errors(f"deleting the alarms of {endpoint}"):
            cloudwatch = client(session, "cloudwatch")
            present = [a["AlarmName"] for a in cloudwatch.describe_alarms(AlarmNames=names)["MetricAlarms"]]
            if present:
                cloudwatch.delete_alarms(AlarmNames=present)
                deleted += [f"alarm {name}" for name in present]
    return deleted


def _alarm_names(endpoint: str) -> list[str]:
    from deploy_endpoint import alarm_names

    return alarm_names(endpoint)


# ---------------------------------------------------------------------------------------------------- approval


def _package_arn(sm, config: Config, version: str | None) -> str:
    """The ARN of ``version`` (number or ARN) in the group, or of the newest PendingManualApproval version."""
    if version and version.startswith("arn:"):
        return version
    request = {"ModelPackageGroupName": config.model_package_group, "SortBy": "CreationTime",
               "SortOrder": "Descending"}  # fmt: skip
    if not version:
        request["ModelApprovalStatus"] = "PendingManualApproval"
    for page in sm.get_paginator("list_model_packages").paginate(**request):
        for summary in page["ModelPackageSummaryList"]:
            if not version or str(summary.get("ModelPackageVersion")) == str(version):
                return summary["ModelPackageArn"]
    what = f"version {version}" if version else "PendingManualApproval version"
    raise UserError(f"model package group {config.model_package_group} has no {what}. Fix: name an existing "
                    "version (python -m pipeline approve <version>) or run the pipeline first")


def set_approval(config: Config, version: str | None, status: str, reason: str) -> dict:
    """UpdateModelPackage(ModelApprovalStatus=status, ApprovalDescription=reason) on ``version`` (default: the
    newest pending one). Returns ``{"ModelPackageArn"}``. Raises UserError on AWS errors or no such version."""
    from pipeline.aws import aws_errors, client, clients

    sm = client(clients(config), "sagemaker")
    with aws_errors(f"setting the approval status of a {config.model_package_group} version to {status}"):
        arn = _package_arn(sm, config, version)
        sm.update_model_package(ModelPackageArn=arn, ModelApprovalStatus=status, ApprovalDescription=reason)
    return {"ModelPackageArn": arn}


def describe_stage(config: Config, endpoint_name: str) -> dict:
    """``{"endpoint_name", "status", "model_package_arn"}`` of a stage endpoint (status ``NotFound`` if absent)."""
    from deploy_endpoint import served_package

    from pipeline.aws import aws_errors, client, clients

    sm = client(clients(config), "sagemaker")
    with aws_errors(f"describing endpoint {endpoint_name}"):
        try:
            described = sm.describe_endpoint(EndpointName=endpoint_name)
        except ClientError as error:
            if _not_found(error):
                return {"endpoint_name": endpoint_name, "status": "NotFound", "model_package_arn": None}
            raise
        package = served_package(sm, described)
    return {"endpoint_name": endpoint_name, "status": described["EndpointStatus"],
            "model_package_arn": package["ModelPackageArn"] if package else None,
            "failure_reason": described.get("FailureReason")}  # fmt: skip


def smoke_test(config: Config, images_dir: Path, limit: int = 500) -> dict:
    """InvokeEndpoint on staging with up to ``limit`` images of an ImageFolder tree; the same result as
    :func:`pipeline.local.stages.smoke_test`."""
    from pipeline.aws import aws_errors, client, clients
    from pipeline.local.demo import sample_images, top_prediction
    from pipeline.serving.client import content_type_for

    images = sample_images(Path(images_dir), limit)
    if not images:
        raise UserError(f"no images under {images_dir}: give the test split (an ImageFolder tree) with --images")
    runtime = client(clients(config), "sagemaker-runtime")
    endpoint = config.deploy.stages.staging.endpoint_name
    right = errors = 0
    with aws_errors(f"invoking endpoint {endpoint}"):
        for path, label in images:
            try:
                answer = runtime.invoke_endpoint(EndpointName=endpoint, Body=path.read_bytes(),
                                                 ContentType=content_type_for(path), Accept="application/json")
            except ClientError as error:
                if _code(error) in ("ModelError", "ServiceUnavailable", "InternalFailure"):
                    errors += 1
                    continue
                raise
            right += top_prediction(json.loads(answer["Body"].read()))[0] == label
    threshold = config.evaluation.accuracy_threshold
    accuracy = right / len(images)
    return {"accuracy": accuracy, "images": len(images), "errors": errors, "threshold": threshold,
            "passed": errors == 0 and accuracy >= threshold}  # fmt: skip


def promote(config: Config, images_dir: Path | None) -> dict:
    """Smoke-test staging, then invoke the deploy Lambda for production with the package staging serves.

    Returns the Lambda's answer plus ``stage``, ``model_package_arn`` and ``smoke_test``; ``status``
    ``SmokeTestFailed`` when the test does not pass (production untouched). Raises UserError when staging serves
    nothing, no ``images_dir`` is given, or an AWS call fails.
    """
    from botocore.config import Config as BotoConfig

    from pipeline.aws import aws_errors, clients

    if images_dir is None:
        raise UserError("promote needs the test images in AWS: --images <ImageFolder tree> (e.g. the test split, "
                        "downloaded with `aws s3 sync`)")
    staging = describe_stage(config, config.deploy.stages.staging.endpoint_name)
    if staging["status"] != "InService" or not staging["model_package_arn"]:
        raise UserError(f"staging endpoint {staging['endpoint_name']} is {staging['status']}: approve a version "
                        "first (python -m pipeline approve) and wait until it is InService")
    arn = staging["model_package_arn"]
    base = {"stage": "production", "endpoint_name": config.deploy.stages.production.endpoint_name,
            "model_package_arn": arn}  # fmt: skip
    smoke = smoke_test(config, images_dir)
    if not smoke["passed"]:
        return {**base, "status": "SmokeTestFailed", "smoke_test": smoke,
                "reason": f"staging answered {smoke['accuracy']:.4f} accuracy ({smoke['errors']} errors); the "
                          f"gate's threshold is {smoke['threshold']}"}  # fmt: skip
    event = {"model_package_arn": arn, **stage_event(config, "production")}
    # The function may wait up to its timeout for the endpoint's outcome: read that long, and never retry the
    # invocation (a retry would be a second deployment request).
    waiting = BotoConfig(read_timeout=config.deploy.lambda_timeout_s + 60, retries={"total_max_attempts": 1})
    lam = clients(config).client("lambda", config=waiting)
    with aws_errors(f"invoking {config.deploy.lambda_function_name} for production"):
        answer = lam.invoke(FunctionName=config.deploy.lambda_function_name, InvocationType="RequestResponse",
                            Payload=json.dumps(event).encode())
    payload = json.loads(answer["Payload"].read() or b"{}")
    if answer.get("FunctionError"):
        raise UserError(f"the deploy Lambda failed for production: {payload.get('errorMessage', payload)}")
    return {**base, **payload, "smoke_test": smoke}
