"""The approval-to-production calls against moto's server on loopback: UpdateModelPackage, the EventBridge rules
and their targets, the Lambda permission, the SNS topic policy, CloudWatch alarms, endpoint configs with
DataCaptureConfig, and UpdateEndpoint's DeploymentConfig (moto 5.2.5 has no UpdateEndpoint: that one call is
checked against botocore's service model, the shape AWS validates, and recorded).
"""

from __future__ import annotations

import json

import boto3
import pytest
from botocore.exceptions import ClientError, ParamValidationError
from botocore.validate import validate_parameters
from deploy_endpoint import EndpointBusyError, alarm_names, complete_callbacks, deploy, handler  # noqa: E402

import pipeline._entrypoints  # noqa: F401
from pipeline import aws, release  # noqa: E402
from pipeline.config import load_config  # noqa: E402

ACCOUNT, REGION = "123456789012", "us-east-1"
IMAGE = "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-inference:2.6-cpu-py312"
# The documented example of a model package state change (automating-sagemaker-with-eventbridge.html), with this
# test's group and an approval.
PACKAGE_EVENT = {
    "version": "0", "id": "844e2571-85d4-695f-b930-0153b71dcb42", "detail-type": "SageMaker Model Package State Change",
    "source": "aws.sagemaker", "account": ACCOUNT, "time": "2021-02-24T17:00:14Z", "region": REGION,
    "resources": [f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:model-package/GROUP/2"],
    "detail": {"ModelPackageGroupName": "GROUP", "ModelPackageVersion": 2,
               "ModelPackageArn": f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:model-package/GROUP/2",
               "ModelPackageStatus": "Completed", "ModelApprovalStatus": "Approved"},
}  # fmt: skip



@pytest.fixture
def config(aws_env, request):
    """Roles that exist in moto's IAM, an SNS topic, names unique to the test (moto's state is per module)."""
    name = request.node.name.replace("_", "-")[:36].strip("-")
    iam = boto3.client("iam", region_name=REGION)
    roles = {}
    for role in ("pipeline", "lambda"):
        try:
            roles[role] = iam.create_role(RoleName=f"{name}-{role}", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
        except iam.exceptions.EntityAlreadyExistsException:
            roles[role] = f"arn:aws:iam::{ACCOUNT}:role/{name}-{role}"
    bucket = f"bucket-{name}".lower()
    boto3.client("s3", region_name=REGION).create_bucket(Bucket=bucket)
    topic = boto3.client("sns", region_name=REGION).create_topic(Name=f"{name}-alerts")["TopicArn"]
    return load_config(overrides=[
        f"pipeline_name={name}", f"model_package_group={name}-models", f"bucket={bucket}",
        f"role_arn={roles['pipeline']}", f"deploy.lambda_role_arn={roles['lambda']}",
        f"deploy.lambda_function_name={name}-deploy", f"notifications.topic_arn={topic}",
        f"deploy.stages.staging.endpoint_name={name}-staging", f"deploy.stages.production.endpoint_name={name}-prod",
    ])  # fmt: skip


def _package(sm, config, data_url: str, status: str = "PendingManualApproval") -> str:
    sm.create_model_package_group(ModelPackageGroupName=config.model_package_group) if not sm.list_model_package_groups(
        NameContains=config.model_package_group)["ModelPackageGroupSummaryList"] else None
    return sm.create_model_package(
        ModelPackageGroupName=config.model_package_group, ModelApprovalStatus=status,
        InferenceSpecification={"Containers": [{"Image": IMAGE, "ModelDataUrl": data_url}],
                                "SupportedContentTypes": ["application/x-image"],
                                "SupportedResponseMIMETypes": ["application/json"]},
    )["ModelPackageArn"]  # fmt: skip


def _matches(pattern: dict, event: dict) -> bool:
    """EventBridge's matching of ``event`` by ``pattern`` (moto's implementation: moto has no TestEventPattern)."""
    from moto.events.models import EventPattern

    return EventPattern.load(json.dumps(pattern)).matches_event(event)


def test_upsert_creates_the_approval_and_notification_rules_and_teardown_removes_them(config):
    aws.upsert(config)
    events, lam = boto3.client("events", region_name=REGION), boto3.client("lambda", region_name=REGION)
    names = release.rule_names(config)
    rule = events.describe_rule(Name=names["approval"])
    pattern = json.loads(rule["EventPattern"])
    group = config.model_package_group
    approved = json.loads(json.dumps(PACKAGE_EVENT).replace("GROUP", group))
    assert _matches(pattern, approved)
    assert not _matches(pattern, {**approved, "detail": {**approved["detail"], "ModelApprovalStatus": "Rejected"}})
    assert not _matches(pattern, json.loads(json.dumps(PACKAGE_EVENT).replace("GROUP", "another-group")))

    (target,) = events.list_targets_by_rule(Rule=names["approval"])["Targets"]
    function_arn = lam.get_function(FunctionName=config.deploy.lambda_function_name)["Configuration"]["FunctionArn"]
    assert target["Arn"] == function_arn
    transformer = target["InputTransformer"]
    assert transformer["InputPathsMap"] == {"arn": "$.detail.ModelPackageArn"}
    # What the Lambda receives: the template with <arn> replaced by the event's package ARN.
    delivered = json.loads(transformer["InputTemplate"].replace("<arn>", approved["detail"]["ModelPackageArn"]))
    assert delivered["model_package_arn"] == approved["detail"]["ModelPackageArn"]
    assert delivered["endpoint_name"] == config.deploy.stages.staging.endpoint_name
    assert delivered["data_capture_uri"].endswith("/data-capture") and delivered["canary_percent"] == 10

    policy = json.loads(lam.get_policy(FunctionName=config.deploy.lambda_function_name)["Policy"])
    (statement,) = [s for s in policy["Statement"] if s["Sid"] == f"{names['approval']}-invoke"]
    assert statement["Principal"] == {"Service": "events.amazonaws.com"}
    assert statement["Condition"]["ArnLike"]["AWS:SourceArn"] == rule["Arn"]

    topic = config.notifications.topic_arn
    for key in ("pipeline_failed", "endpoint_failed"):
        assert [t["Arn"] for t in events.list_targets_by_rule(Rule=names[key])["Targets"]] == [topic]
    failed_pipeline = json.loads(events.describe_rule(Name=names["pipeline_failed"])["EventPattern"])
    assert failed_pipeline["detail"]["currentPipelineExecutionStatus"] == ["Failed", "Stopped"]
    topic_policy = json.loads(boto3.client("sns", region_name=REGION).get_topic_attributes(TopicArn=topic)[
        "Attributes"]["Policy"])
    assert any(s.get("Principal") == {"Service": "events.amazonaws.com"} and s["Action"] == "sns:Publish"
               for s in topic_policy["Statement"])

    aws.upsert(config)  # again: the permission is there already, nothing fails
    deleted = aws.teardown(config)
    assert {f"rule {name}" for name in names.values()} <= set(deleted)
    assert f"permission {names['approval']}-invoke" in deleted
    assert events.list_rules(NamePrefix=config.pipeline_name)["Rules"] == []
    assert not any(f"rule {n}" in aws.teardown(config) for n in names.values())  # second run: nothing left


def test_approve_and_reject_update_the_model_package(config):
    sm = boto3.client("sagemaker", region_name=REGION)
    first = _package(sm, config, f"s3://{config.bucket}/v1/model.tar.gz")
    second = _package(sm, config, f"s3://{config.bucket}/v2/model.tar.gz")
    assert release.set_approval(config, None, "Approved", "QA passed")["ModelPackageArn"] == second  # newest pending
    described = sm.describe_model_package(ModelPackageName=second)
    assert described["ModelApprovalStatus"] == "Approved" and described["ApprovalDescription"] == "QA passed"
    release.set_approval(config, "1", "Rejected", "worse on sevens")
    assert sm.describe_model_package(ModelPackageName=first)["ModelApprovalStatus"] == "Rejected"
    with pytest.raises(aws.UserError, match="has no PendingManualApproval version"):
        release.set_approval(config, None, "Approved", "nothing left")


class Recorder:
    """moto's SageMaker client, except UpdateEndpoint (not in moto 5.2.5): its parameters are validated against
    botocore's service model, recorded, and the endpoint moved to the new config; ``status`` overrides
    DescribeEndpoint's EndpointStatus."""

    def __init__(self, client):
        self.client, self.updates, self.status = client, [], None

    def __getattr__(self, name):
        return getattr(self.client, name)

    def describe_endpoint(self, **kwargs):
        described = self.client.describe_endpoint(**kwargs)
        return {**described, "EndpointStatus": self.status or described["EndpointStatus"]}

    def update_endpoint(self, **kwargs):
        self._validate("UpdateEndpoint", kwargs)
        self.updates.append(kwargs)
        return {"EndpointArn": "recorded"}

    def _validate(self, operation: str, kwargs: dict) -> None:
        shape = self.client.meta.service_model.operation_model(operation).input_shape
        validate_parameters(kwargs, shape)  # raises ParamValidationError on a request AWS would refuse


class CallbackRecorder(Recorder):
    """Also records SendPipelineExecutionStepSuccess/Failure (not in moto 5.2.5), validated like UpdateEndpoint;
    ``stale`` makes them fail as SageMaker does for a token nobody waits for."""

    def __init__(self, client):
        super().__init__(client)
        self.answers, self.stale = [], False

    def _answer(self, operation: str, kwargs: dict) -> dict:
        self._validate(operation, kwargs)
        if self.stale:
            raise ClientError({"Error": {"Code": "ResourceNotFound", "Message": "no step waits"}}, operation)
        self.answers.append((operation, kwargs))
        return {"PipelineExecutionArn": "recorded"}

    def send_pipeline_execution_step_success(self, **kwargs):
        return self._answer("SendPipelineExecutionStepSuccess", kwargs)

    def send_pipeline_execution_step_failure(self, **kwargs):
        return self._answer("SendPipelineExecutionStepFailure", kwargs)


def test_deploy_lambda_captures_data_guards_updates_and_skips_what_already_serves(config):
    sm = boto3.client("sagemaker", region_name=REGION)
    cloudwatch = boto3.client("cloudwatch", region_name=REGION)
    recorder = Recorder(sm)
    event = {**release.stage_event(config, "staging"),
             "model_package_arn": _package(sm, config, f"s3://{config.bucket}/v1/model.tar.gz", "Approved")}
    first = deploy(event, recorder, cloudwatch, wait_s=5)
    assert first["status"] == "InService", first  # moto's endpoints are InService at once: the real outcome
    endpoint = config.deploy.stages.staging.endpoint_name
    capture = sm.describe_endpoint_config(EndpointConfigName=first["endpoint_config_name"])["DataCaptureConfig"]
    assert capture["EnableCapture"] and capture["InitialSamplingPercentage"] == 100
    assert capture["DestinationS3Uri"] == config.s3_uri("data-capture")
    assert {o["CaptureMode"] for o in capture["CaptureOptions"]} == {"Input", "Output"}
    alarms = {a["AlarmName"]: a for a in cloudwatch.describe_alarms(AlarmNames=alarm_names(endpoint))["MetricAlarms"]}
    assert alarms[f"{endpoint}-invocation-5xx"]["MetricName"] == "Invocation5XXErrors"
    assert alarms[f"{endpoint}-model-latency"]["Threshold"] == 2000 * 1000  # microseconds
    assert {d["Name"] for d in alarms[f"{endpoint}-model-latency"]["Dimensions"]} == {"EndpointName", "VariantName"}

    # A new version with the same model artifacts: the endpoint is left as it is.
    same = {**event, "model_package_arn": _package(sm, config, f"s3://{config.bucket}/v1/model.tar.gz", "Approved")}
    assert deploy(same, recorder, cloudwatch)["status"] == "Unchanged" and recorder.updates == []

    # New artifacts: a blue/green update with canary traffic, rolled back by the endpoint's alarms.
    new = {**event, "model_package_arn": _package(sm, config, f"s3://{config.bucket}/v3/model.tar.gz", "Approved")}
    assert deploy(new, recorder, cloudwatch)["status"] == "Updating"
    (update,) = recorder.updates
    policy = update["DeploymentConfig"]["BlueGreenUpdatePolicy"]["TrafficRoutingConfiguration"]
    assert policy == {"Type": "CANARY", "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": 10},
                      "WaitIntervalInSeconds": 300}
    assert update["DeploymentConfig"]["AutoRollbackConfiguration"] == {
        "Alarms": [{"AlarmName": name} for name in alarm_names(endpoint)]}

    # An endpoint that is updating is not updated again: the function says so (the rule's retry waits).
    recorder.status = "Updating"
    newer = {**event, "model_package_arn": _package(sm, config, f"s3://{config.bucket}/v4/model.tar.gz", "Approved")}
    with pytest.raises(EndpointBusyError, match="is Updating"):
        deploy(newer, recorder, cloudwatch)
    assert len(recorder.updates) == 1


def test_the_update_request_shape_is_checked():
    """The Recorder refuses what AWS would: a DeploymentConfig with a misspelt key fails validation."""
    shape = boto3.client("sagemaker", region_name=REGION).meta.service_model.operation_model(
        "UpdateEndpoint").input_shape
    with pytest.raises(ParamValidationError):
        validate_parameters({"EndpointName": "e", "EndpointConfigName": "c",
                             "DeploymentConfig": {"BlueGreenUpdatePolicy": {"TrafficRouting": {}}}}, shape)


@pytest.fixture
def simple_lambda(aws_env):
    """moto's Lambda without Docker (it echoes the event, or returns what was queued), for this test only: the
    setting is process-wide in moto, so it is put back afterwards."""
    import requests

    requests.post(f"{aws_env}/moto-api/config", json={"lambda": {"use_docker": False}}, timeout=10)
    yield aws_env
    requests.post(f"{aws_env}/moto-api/config", json={"lambda": {"use_docker": True}}, timeout=10)


def _images(root, index: int):
    """An ImageFolder tree of one real digit per class (the ``index``-th of each): 10 images."""
    from pipeline.sample_data import write_digits

    every = root / "every"
    write_digits(every, per_class=2)
    tree = root / f"images-{index}"
    for folder in sorted(every.iterdir()):
        (tree / folder.name).mkdir(parents=True)
        chosen = sorted(folder.iterdir())[index]
        (tree / folder.name / chosen.name).write_bytes(chosen.read_bytes())
    return tree


def _text_bodies(monkeypatch):
    """moto's server decodes every request body as UTF-8 and fails on an image: the runtime client sends each image
    base64-encoded to moto (still one distinct body per image, which is how moto picks its queued answers)."""
    import base64

    made = aws.client

    def encode(params, **_kwargs):
        params["Body"] = base64.b64encode(params["Body"])

    def client(session, service):
        made_client = made(session, service)
        if service == "sagemaker-runtime":
            made_client.meta.events.register("provide-client-params.sagemaker-runtime.InvokeEndpoint", encode)
        return made_client

    monkeypatch.setattr(aws, "client", client)


def test_promote_smoke_tests_staging_then_deploys_what_staging_serves_to_production(config, simple_lambda, tmp_path,
                                                                                    monkeypatch):
    import requests

    _text_bodies(monkeypatch)

    sm = boto3.client("sagemaker", region_name=REGION)
    lam = boto3.client("lambda", region_name=REGION)
    lam.create_function(FunctionName=config.deploy.lambda_function_name, Runtime="python3.12",
                        Role=config.deploy.lambda_role_arn, Handler="deploy_endpoint.handler",
                        Code={"ZipFile": b"PK\x05\x06" + b"\x00" * 18})  # fmt: skip
    package = _package(sm, config, f"s3://{config.bucket}/v1/model.tar.gz", "Approved")
    staged = deploy({**release.stage_event(config, "staging"), "model_package_arn": package}, sm,
                    boto3.client("cloudwatch", region_name=REGION), wait_s=5)  # fmt: skip
    assert staged["status"] == "InService"

    def answers(labels):  # what moto's InvokeEndpoint returns, one per request, in order
        results = [{"Body": json.dumps([{"label": label, "probability": 0.9}]), "ContentType": "application/json"}
                   for label in labels]  # fmt: skip
        requests.post(f"{simple_lambda}/moto-api/static/sagemaker/endpoint-results", json={"results": results},
                      timeout=10)  # fmt: skip

    # Staging answers "0_zero" for every digit: 1 of 10 right, under the gate's threshold. Production untouched:
    # the queued Lambda answer is still there afterwards.
    failing = _images(tmp_path, 0)
    answers(["0_zero"] * 10)
    requests.post(f"{simple_lambda}/moto-api/static/lambda-simple/response",
                  json={"results": ['{"status": "still queued"}']}, timeout=10)  # fmt: skip
    refused = release.promote(config, failing)
    assert refused["status"] == "SmokeTestFailed" and refused["smoke_test"]["accuracy"] == pytest.approx(0.1)
    assert "0.1000 accuracy" in refused["reason"] and f"threshold is {config.evaluation.accuracy_threshold}" in (
        refused["reason"])
    queued = lam.invoke(FunctionName=config.deploy.lambda_function_name, Payload=b"{}")["Payload"].read()
    assert json.loads(queued) == {"status": "still queued"}

    # Staging answers every digit right: the Lambda is invoked for production with the package staging serves.
    passing = _images(tmp_path, 1)
    answers([folder.name for folder in sorted(passing.iterdir())])
    promoted = release.promote(config, passing)
    assert promoted["smoke_test"] == {"accuracy": 1.0, "images": 10, "errors": 0,
                                      "threshold": config.evaluation.accuracy_threshold, "passed": True}
    # moto's Lambda echoes the event it was given: the production stage's event with staging's package
    production = release.stage_event(config, "production")
    assert promoted["model_package_arn"] == package and promoted["stage"] == "production"
    assert {key: promoted[key] for key in production} == production
    assert promoted["endpoint_name"] == config.deploy.stages.production.endpoint_name


def _callback_event(sqs, queue_url: str, arguments: dict, token: str) -> dict:
    """The SQS event Lambda delivers for the callback step's message (body as SageMaker Pipelines sends it)."""
    sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps({
        "token": token, "pipelineExecutionArn": f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:pipeline/p/execution/x",
        "status": "Executing", "arguments": arguments}))  # fmt: skip
    (message,) = sqs.receive_message(QueueUrl=queue_url, VisibilityTimeout=600)["Messages"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    return {"Records": [{"messageId": message["MessageId"], "receiptHandle": message["ReceiptHandle"],
                         "body": message["Body"], "eventSource": "aws:sqs", "eventSourceARN": queue_arn}]}


def test_the_callback_step_ends_with_the_endpoints_real_outcome(config):
    """The deploy step returns at once (``wait_for_outcome``); the endpoint_outcome callback step is answered from
    the queue: success when the new config serves, failure with the reason after a rollback, and a message about
    an endpoint still updating goes back to the queue."""
    sm = CallbackRecorder(boto3.client("sagemaker", region_name=REGION))
    cloudwatch, sqs = boto3.client("cloudwatch", region_name=REGION), boto3.client("sqs", region_name=REGION)
    queue_url = sqs.create_queue(QueueName=release.outcome_queue_name(config))["QueueUrl"]
    event = {**release.stage_event(config, "staging"), "wait_for_outcome": "false",
             "model_package_arn": _package(sm, config, f"s3://{config.bucket}/v1/model.tar.gz", "Approved")}
    created = deploy(event, sm, cloudwatch)
    assert created["status"] == "Creating"  # returned at once; moto's endpoint is already InService
    arguments = {key: created[key] or "" for key in ("endpoint_name", "endpoint_config_name", "status", "reason")}

    assert complete_callbacks(_callback_event(sqs, queue_url, arguments, "Tok3nAAAAA"), sm, sqs) == {
        "batchItemFailures": []}
    assert sm.answers == [("SendPipelineExecutionStepSuccess", {"CallbackToken": "Tok3nAAAAA", "OutputParameters": [
        {"Name": "status", "Value": "InService"}, {"Name": "reason", "Value": ""}]})]  # fmt: skip

    # Still updating: no answer, the message is a batch item failure and invisible for RECHECK_S seconds.
    sm.status, sm.answers = "Updating", []
    waiting = _callback_event(sqs, queue_url, arguments, "Tok3nBBBBB")
    assert complete_callbacks(waiting, sm, sqs) == {
        "batchItemFailures": [{"itemIdentifier": waiting["Records"][0]["messageId"]}]}
    assert sm.answers == []

    # The endpoint went back to another config: a rollback fails the step with the reason.
    sm.status = None
    other_config = f"{arguments['endpoint_config_name']}-other"
    rolled_back = {**arguments, "endpoint_config_name": other_config, "status": "Updating"}
    complete_callbacks(_callback_event(sqs, queue_url, rolled_back, "Tok3nCCCCC"), sm, sqs)
    ((operation, answer),) = sm.answers
    assert operation == "SendPipelineExecutionStepFailure" and answer["CallbackToken"] == "Tok3nCCCCC"
    assert answer["FailureReason"].startswith(f"endpoint {arguments['endpoint_name']} RolledBack: the update was")

    # Skipped (package not approved) succeeds as reported; a token nobody waits for any more is dropped.
    sm.answers = []
    skipped = {**arguments, "status": "Skipped", "reason": "model package approval status is PendingManualApproval"}
    complete_callbacks(_callback_event(sqs, queue_url, skipped, "Tok3nDDDDD"), sm, sqs)
    assert sm.answers[0][1]["OutputParameters"][0] == {"Name": "status", "Value": "Skipped"}
    sm.stale = True
    assert complete_callbacks(_callback_event(sqs, queue_url, skipped, "Tok3nEEEEE"), sm, sqs) == {
        "batchItemFailures": []}


def test_the_handler_tells_a_queue_event_from_a_deploy_event(monkeypatch):
    """SQS records go to complete_callbacks; a deploy event with ``wait_for_outcome: false`` does not wait, and
    its answer has strings where deploy() has None (the LambdaStep's outputs are strings)."""
    import deploy_endpoint

    calls = []
    monkeypatch.setattr(deploy_endpoint, "complete_callbacks", lambda event: calls.append(event) or {"done": 1})
    monkeypatch.setattr(deploy_endpoint, "deploy", lambda event, wait_s: calls.append(wait_s) or {
        "status": "Creating", "reason": None})  # fmt: skip

    class Context:
        def get_remaining_time_in_millis(self):
            return 120_000

    queue_event = {"Records": [{"eventSource": "aws:sqs", "body": "{}"}]}
    assert handler(queue_event, Context()) == {"done": 1} and calls == [queue_event]
    assert handler({"wait_for_outcome": "false"}, Context()) == {"status": "Creating", "reason": ""}
    assert handler({}, Context()) == {"status": "Creating", "reason": ""}
    assert calls[1:] == [0.0, 120 - deploy_endpoint.ANSWER_MARGIN_S]
