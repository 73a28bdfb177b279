"""upsert, start, status, schedule, unschedule and teardown against moto's server on loopback.

moto 5.2.5 implements pipelines, model package groups, Lambda, S3, EventBridge Scheduler and endpoints, but not
ListPipelineExecutionSteps: ``status`` must still answer (without steps) rather than fail.
"""

from __future__ import annotations

import json

import boto3
import pytest

from pipeline import aws, release
from pipeline.cli import main
from pipeline.config import load_config
from pipeline.errors import UserError

ACCOUNT = "123456789012"  # moto's default account
REGION = "us-east-1"



@pytest.fixture
def config(aws_env, request):
    """A config whose roles exist in moto's IAM and whose names are unique to the test (moto state is shared)."""
    name = request.node.name.replace("_", "-")[:40].strip("-")
    iam = boto3.client("iam", region_name=REGION)
    roles = {}
    for role in ("pipeline", "lambda", "scheduler"):
        role_name = f"{name}-{role}"
        try:
            roles[role] = iam.create_role(RoleName=role_name, AssumeRolePolicyDocument="{}")["Role"]["Arn"]
        except iam.exceptions.EntityAlreadyExistsException:
            roles[role] = f"arn:aws:iam::{ACCOUNT}:role/{role_name}"
    bucket = f"bucket-{name}".lower()
    boto3.client("s3", region_name=REGION).create_bucket(Bucket=bucket)
    return load_config(
        overrides=[
            f"pipeline_name={name}",
            f"model_package_group={name}-models",
            f"bucket={bucket}",
            f"role_arn={roles['pipeline']}",
            f"deploy.lambda_role_arn={roles['lambda']}",
            f"deploy.lambda_function_name={name}-deploy",
            f"deploy.stages.staging.endpoint_name={name}-staging",
            f"deploy.stages.production.endpoint_name={name}-prod",
            f"schedule.role_arn={roles['scheduler']}",
        ]
    )


def test_upsert_creates_then_updates(config):
    first = aws.upsert(config)
    assert first.created and first.pipeline_arn.endswith(f":pipeline/{config.pipeline_name}")
    assert any(uri.endswith("/sourcedir.tar.gz") for uri in first.uploaded)
    assert sum(uri.endswith("/runproc.sh") for uri in first.uploaded) == 3  # split, debug, evaluate
    sm = boto3.client("sagemaker", region_name=REGION)
    described = sm.describe_pipeline(PipelineName=config.pipeline_name)
    steps = [s["Name"] for s in json.loads(described["PipelineDefinition"])["Steps"]]
    assert steps == ["split", "tune", "train", "debug", "evaluate", "quality_gate"]
    assert sm.describe_model_package_group(ModelPackageGroupName=config.model_package_group)
    function = boto3.client("lambda", region_name=REGION).get_function(FunctionName=config.deploy.lambda_function_name)
    assert function["Configuration"]["Handler"] == "deploy_endpoint.handler"
    # the queue of the endpoint_outcome callback step, at the URL the definition names, triggers the function
    sqs = boto3.client("sqs", region_name=REGION)
    queue_url = sqs.get_queue_url(QueueName=release.outcome_queue_name(config))["QueueUrl"]
    assert queue_url.endswith(release.outcome_queue_url(config).split(".amazonaws.com", 1)[1])
    queue = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["All"])["Attributes"]
    assert int(queue["VisibilityTimeout"]) == 6 * config.deploy.lambda_timeout_s
    assert int(queue["MessageRetentionPeriod"]) == 14 * 24 * 3600
    (mapping,) = boto3.client("lambda", region_name=REGION).list_event_source_mappings(
        EventSourceArn=queue["QueueArn"])["EventSourceMappings"]
    assert mapping["FunctionArn"] == first.lambda_function and mapping["BatchSize"] == 1
    s3 = boto3.client("s3", region_name=REGION)
    code_uri = next(uri for uri in first.uploaded if uri.endswith("sourcedir.tar.gz"))
    key = code_uri.split("/", 3)[3]
    assert s3.get_object(Bucket=config.bucket, Key=key)["Body"].read()[:2] == b"\x1f\x8b"  # gzip

    second = aws.upsert(config)
    assert not second.created and second.uploaded == []  # same content hash: nothing re-uploaded
    mappings = boto3.client("lambda", region_name=REGION).list_event_source_mappings(
        EventSourceArn=queue["QueueArn"])["EventSourceMappings"]
    assert len(mappings) == 1  # not connected twice
    assert sorted(second.already_there) == sorted(first.uploaded)


def test_start_and_status(config):
    aws.upsert(config)
    with pytest.raises(UserError, match="no such parameter; did you mean 'AccuracyThreshold'"):
        aws.start(config, {"AccuracyThreshhold": "0.5"})
    arn = aws.start(config, aws.parse_params(["AccuracyThreshold=0.5"]))
    assert f"pipeline/{config.pipeline_name}/execution/" in arn
    execution = aws.status(config)  # the latest execution
    assert execution.arn == arn
    assert execution.status in ("Executing", "Succeeded")
    if execution.steps is None:  # moto: ListPipelineExecutionSteps not implemented
        assert "does not list execution steps" in execution.note


def test_start_before_upsert_is_a_clear_error(config):
    with pytest.raises(UserError, match="does not exist .* run `python -m pipeline upsert` first"):
        aws.start(config, {})
    with pytest.raises(UserError, match="does not exist .* run `python -m pipeline upsert` first"):
        aws.status(config)
    aws.upsert(config)
    with pytest.raises(UserError, match="has no execution yet"):
        aws.status(config)


def test_schedule_and_unschedule(config):
    aws.upsert(config)
    arn = aws.schedule(config, rate="1 day")
    assert arn.endswith(f"schedule/default/{aws.schedule_name(config)}")
    scheduler = boto3.client("scheduler", region_name=REGION)
    described = scheduler.get_schedule(Name=aws.schedule_name(config))
    assert described["ScheduleExpression"] == "rate(1 day)"
    assert described["Target"]["RoleArn"] == config.schedule.role_arn
    aws.schedule(config, cron="0 3 * * ? *")  # update in place
    assert scheduler.get_schedule(Name=aws.schedule_name(config))["ScheduleExpression"] == "cron(0 3 * * ? *)"
    assert aws.unschedule(config) is True
    assert aws.unschedule(config) is False  # safe to run twice


@pytest.mark.parametrize(
    ("cron", "rate", "message"),
    [
        ("0 3 * * *", None, "6 fields"),
        ("0 3 * * 1 *", None, "'\\?' in exactly one"),
        (None, "1 days", "EventBridge wants '1 day'"),
        (None, "2 hour", "EventBridge wants '2 hours'"),
        (None, "daily", "write '<n> minutes"),
        (None, None, "exactly one of"),
    ],
)
def test_schedule_expression_errors(cron, rate, message):
    with pytest.raises(UserError, match=message):
        aws.schedule_expression(cron=cron, rate=rate)


def test_schedule_expression_accepts_wrappers():
    assert aws.schedule_expression(cron="cron(0 3 ? * MON-FRI *)") == ("cron", "0 3 ? * MON-FRI *")
    assert aws.schedule_expression(rate="rate(12 hours)") == ("rate", "12 hours")


def test_teardown_is_idempotent(config):
    aws.upsert(config)
    aws.schedule(config, rate="7 days")
    sm = boto3.client("sagemaker", region_name=REGION)
    endpoint = config.deploy.stages.production.endpoint_name
    sm.create_model(ModelName=f"{endpoint}-v1", ExecutionRoleArn=config.role_arn,
                    PrimaryContainer={"Image": "123.dkr.ecr.us-east-1.amazonaws.com/x:1"})  # fmt: skip
    sm.create_endpoint_config(
        EndpointConfigName=f"{endpoint}-v1-abc",
        ProductionVariants=[{"VariantName": "AllTraffic", "ModelName": f"{endpoint}-v1",
                             "InstanceType": "ml.m5.large", "InitialInstanceCount": 1}],
    )  # fmt: skip
    sm.create_endpoint(EndpointName=endpoint, EndpointConfigName=f"{endpoint}-v1-abc")

    deleted = aws.teardown(config, delete_pipeline=True)
    assert f"endpoint {endpoint}" in deleted
    assert f"endpoint config {endpoint}-v1-abc" in deleted
    assert f"model {endpoint}-v1" in deleted
    assert f"schedule {aws.schedule_name(config)}" in deleted
    assert f"pipeline {config.pipeline_name}" in deleted
    assert f"queue {release.outcome_queue_name(config)}" in deleted
    assert any(item.startswith("event source mapping ") for item in deleted)
    assert aws.teardown(config, delete_pipeline=True) == []  # second run: nothing left, no error
    assert sm.describe_model_package_group(ModelPackageGroupName=config.model_package_group)  # kept


def test_cli_teardown_refuses_without_yes(aws_env, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    assert main(["teardown"]) == 2
    assert "pass --yes" in capsys.readouterr().err


def test_aws_error_becomes_one_message(config):
    # the bucket does not exist: the upload fails with NoSuchBucket and the fix is named
    broken = config.model_copy(update={"bucket": "no-such-bucket-here"})
    with pytest.raises(UserError, match=r"uploading the code .* NoSuchBucket.*Fix: create the bucket"):
        aws.upsert(broken)


def test_deploy_lambda_handler_creates_then_keeps_the_endpoint(config):
    """entrypoints/deploy_endpoint.py against moto: skips unapproved packages, creates, then is idempotent."""
    from deploy_endpoint import deploy

    import pipeline._entrypoints  # noqa: F401

    sm = boto3.client("sagemaker", region_name=REGION)
    sm.create_model_package_group(ModelPackageGroupName=config.model_package_group)
    package_arn = sm.create_model_package(
        ModelPackageGroupName=config.model_package_group,
        ModelApprovalStatus="PendingManualApproval",
        InferenceSpecification={
            "Containers": [{"Image": "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-inference:2.6-cpu-py312",
                            "ModelDataUrl": f"s3://{config.bucket}/model.tar.gz"}],
            "SupportedContentTypes": ["application/x-image"],
            "SupportedResponseMIMETypes": ["application/json"],
        },
    )["ModelPackageArn"]  # fmt: skip
    event = {"model_package_arn": package_arn, "endpoint_name": config.deploy.stages.staging.endpoint_name,
             "instance_type": "ml.m5.large", "initial_instance_count": 1, "role_arn": config.role_arn}  # fmt: skip
    assert deploy(event, sm, boto3.client("cloudwatch", region_name=REGION))["status"] == "Skipped"
    sm.update_model_package(ModelPackageArn=package_arn, ModelApprovalStatus="Approved")
    first = deploy(event, sm)
    assert first["status"] == "Creating"
    assert sm.describe_endpoint(EndpointName=config.deploy.stages.staging.endpoint_name)["EndpointConfigName"] == (
        first["endpoint_config_name"]
    )
    assert deploy(event, sm)["status"] == "Unchanged"  # a retried step does not redeploy
    with pytest.raises(ValueError, match="lacks role_arn"):
        deploy({**event, "role_arn": ""}, sm)
