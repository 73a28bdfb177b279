"""Credentials and AWS errors: no secret reaches the definition or a log; every AWS failure is one line with the
fix; throttled calls are retried with backoff (botocore ``standard`` retry mode).

AWS here is moto's ThreadedMotoServer on 127.0.0.1 where moto can produce the error (missing bucket, missing
Lambda role, missing pipeline), :class:`fault_server.FaultServer` (scripted HTTP answers, so the real botocore
client signs, parses and retries) where it cannot (throttling, an expired token), and a botocore Stubber for the
role errors of EventBridge Scheduler and SageMaker (moto accepts any role there).
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys

import boto3
import pytest
from botocore.stub import Stubber

from pipeline import aws
from pipeline.cli import main
from pipeline.config import load_config
from pipeline.errors import UserError
from tests.conftest import ENTRYPOINTS, ROOT
from tests.reliability.fault_server import FaultServer

MARKERS = {
    "AWS_ACCESS_KEY_ID": "AKIAMARKERKEYID77777",
    "AWS_SECRET_ACCESS_KEY": "marker-secret-access-key-5f3a9c",
    "AWS_SESSION_TOKEN": "marker-session-token-81d0e2",
}
REGION = "us-east-1"
MOTO_ACCOUNT = "123456789012"
#: The AWS Deep Learning Containers registry account (public images, the same for every user in us-east-1).
DLC_ACCOUNT = "763104351884"
THROTTLED = (400, {"__type": "ThrottlingException", "message": "Rate exceeded"})
NO_EXECUTIONS = (200, {"PipelineExecutionSummaries": []})


@pytest.fixture
def isolated_aws(monkeypatch):
    """No credential, profile or config file from this machine; IMDS and container credentials off."""
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
                 "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                 "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_RETRY_MODE",
                 "AWS_MAX_ATTEMPTS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)


@pytest.fixture
def marked(isolated_aws, monkeypatch):
    """Credentials set to marker values that must never appear in an output."""
    for name, value in MARKERS.items():
        monkeypatch.setenv(name, value)


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Fix:" in lines[0], err
    assert not any(value in err for value in MARKERS.values()), err
    return lines[0]


# -- no secret in the definition or the logs ------------------------------------------------------------------


@pytest.mark.parametrize("local", [False, True])
def test_definition_holds_no_credential_and_no_account_but_the_configured_ones(marked, local, tmp_path):
    out = tmp_path / "definition.json"
    result = subprocess.run([sys.executable, "-m", "pipeline", "-v", "definition", "--out", str(out),
                             *(["--local"] if local else [])], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    text = out.read_text(encoding="utf-8")
    for output in (text, result.stdout, result.stderr):
        assert not any(value in output for value in MARKERS.values())
    config = load_config(local=local)
    configured = {arn.split(":")[4] for arn in (config.role_arn, config.deploy.lambda_role_arn) if arn}
    for match in re.finditer(r"(?<!\d)\d{12}(?!\d)", text):
        account = match.group()
        context = text[max(0, match.start() - 40): match.end() + 20]
        assert account in configured or (account == DLC_ACCOUNT and ".dkr.ecr." in context), context
    assert not re.search(r"sagemaker-[a-z0-9-]+-\d{12}", text), "an SDK default bucket names the caller's account"


def test_verbose_aws_command_logs_no_credential(marked, monkeypatch, capsys):
    """``-v`` turns on DEBUG logging; botocore's DEBUG records (request headers: the session token) stay off."""
    with FaultServer([NO_EXECUTIONS]) as server:
        monkeypatch.setenv("AWS_ENDPOINT_URL", server.url)
        assert main(["-v", "status"]) == 2
    assert server.requests, "the call never reached the server"
    assert server.requests[0][1].get("X-Amz-Security-Token") == MARKERS["AWS_SESSION_TOKEN"]  # it was sent...
    captured = capsys.readouterr()
    assert "has no execution yet" in captured.err
    assert not any(value in captured.err + captured.out for value in MARKERS.values())  # ...but never logged


# -- one clear message per AWS failure --------------------------------------------------------------------------


def test_missing_credentials_is_one_line_with_the_fix(isolated_aws, capsys):
    assert main(["status"]) == 2
    line = one_error_line(capsys)
    assert "no AWS credentials found" in line and "aws sso login" in line


def test_expired_token_is_one_line_with_the_fix(marked, monkeypatch, capsys):
    expired = (400, {"__type": "ExpiredTokenException", "message": "The security token included in the request is "
                                                                   "expired"})
    with FaultServer([expired]) as server:
        monkeypatch.setenv("AWS_ENDPOINT_URL", server.url)
        assert main(["status"]) == 2
    line = one_error_line(capsys)
    assert "ExpiredTokenException" in line and "refresh your credentials" in line


@pytest.fixture
def moto(isolated_aws, moto_server_url, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    session = boto3.Session(region_name=REGION)  # not boto3.client: its default session would keep the credentials
    iam = session.client("iam")
    try:
        role = iam.create_role(RoleName="reliability-pipeline", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    except iam.exceptions.EntityAlreadyExistsException:  # moto's state lives as long as the module's server
        role = f"arn:aws:iam::{MOTO_ACCOUNT}:role/reliability-pipeline"
    session.client("s3").create_bucket(Bucket="reliability-bucket")
    return ["--set", f"role_arn={role}", "--set", "bucket=reliability-bucket", "--set", "pipeline_name=reliability",
            "--set", "model_package_group=reliability-models", "--set", "deploy.lambda_function_name=reliability-fn"]


def test_missing_bucket_is_one_line_with_the_fix(moto, capsys):
    assert main(["upsert", *moto, "--set", "bucket=no-such-bucket-anywhere"]) == 2
    line = one_error_line(capsys)
    assert "NoSuchBucket" in line and "aws s3 mb" in line


def test_missing_lambda_role_is_one_line_with_the_fix(moto, capsys):
    missing = f"arn:aws:iam::{MOTO_ACCOUNT}:role/NoSuchDeployRole"
    assert main(["upsert", *moto, "--set", f"deploy.lambda_role_arn={missing}"]) == 2
    line = one_error_line(capsys)
    assert "cannot be assumed" in line and "docs/iam/" in line and "deploy.lambda_role_arn" in line


def test_missing_pipeline_is_one_line_with_the_fix(moto, capsys):
    for command in (["start"], ["schedule", "--rate", "1 day"]):
        assert main([*command, *moto, "--set", "pipeline_name=never-upserted"]) == 2
        line = one_error_line(capsys)
        assert "does not exist" in line and "python -m pipeline upsert" in line


ROLE_ERRORS = {
    "scheduler": ("create_schedule", "ValidationException", "The execution role you provide must allow AWS "
                  "EventBridge Scheduler to assume the role.",
                  {"Name": "s", "ScheduleExpression": "rate(1 day)", "FlexibleTimeWindow": {"Mode": "OFF"},
                   "Target": {"Arn": "arn:aws:sagemaker:us-east-1:1:pipeline/p", "RoleArn": "r"}}),
    "sagemaker": ("create_pipeline", "ValidationException", "Could not assume role arn:aws:iam::111122223333:role/x. "
                  "Please ensure that the role exists and allows principal 'sagemaker.amazonaws.com' to assume the "
                  "role.", {"PipelineName": "p", "RoleArn": "arn:aws:iam::111122223333:role/x",
                            "ClientRequestToken": "t" * 32, "PipelineDefinition": "{}"}),
}


@pytest.mark.parametrize("service", sorted(ROLE_ERRORS))
def test_missing_role_reported_by_the_service_names_the_fix(isolated_aws, service):
    """moto accepts any scheduler or pipeline role; the errors those services give come from a botocore Stubber."""
    operation, code, message, params = ROLE_ERRORS[service]
    made = boto3.Session(region_name=REGION, aws_access_key_id="x", aws_secret_access_key="y").client(service)
    with Stubber(made) as stub:
        stub.add_client_error(operation, service_error_code=code, service_message=message, http_status_code=400)
        with pytest.raises(UserError) as raised, aws.aws_errors(f"calling {service}"):
            getattr(made, operation)(**params)
    text = str(raised.value)
    assert "Fix:" in text and "docs/iam/" in text and "role_arn" in text and code in text


# -- throttling: retried with backoff -----------------------------------------------------------------------------


def test_every_client_uses_standard_retries_even_when_the_environment_says_legacy(isolated_aws, monkeypatch):
    monkeypatch.setenv("AWS_RETRY_MODE", "legacy")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    config = load_config()
    session = aws.clients(config)
    for service in ("sagemaker", "s3", "lambda", "scheduler"):
        for made in (aws.client(session, service), session.client(service)):  # ours, and the SDK's way
            assert made.meta.config.retries == {"mode": "standard", "total_max_attempts": aws.MAX_ATTEMPTS}, service


def test_a_throttled_call_is_retried_with_backoff(marked, monkeypatch, capsys):
    delays: list[float] = []
    monkeypatch.setattr("botocore.endpoint.time.sleep", delays.append)  # record the backoff instead of waiting
    with FaultServer([THROTTLED, THROTTLED, NO_EXECUTIONS]) as server:
        monkeypatch.setenv("AWS_ENDPOINT_URL", server.url)
        assert main(["status"]) == 2  # the third answer: no execution yet
    assert [target for target, _ in server.requests] == ["SageMaker.ListPipelineExecutions"] * 3
    assert "has no execution yet" in capsys.readouterr().err
    assert len(delays) == 2 and all(delay >= 0 for delay in delays)


def test_throttling_that_never_ends_stops_after_five_attempts_with_one_line(marked, monkeypatch, capsys):
    delays: list[float] = []
    monkeypatch.setattr("botocore.endpoint.time.sleep", delays.append)
    with FaultServer([THROTTLED]) as server:
        monkeypatch.setenv("AWS_ENDPOINT_URL", server.url)
        assert main(["status"]) == 2
    assert len(server.requests) == aws.MAX_ATTEMPTS and len(delays) == aws.MAX_ATTEMPTS - 1
    assert max(delays) > 0  # exponential backoff with jitter: not every wait is zero
    line = one_error_line(capsys)
    assert "ThrottlingException" in line and "wait a minute" in line


def test_deploy_lambda_client_uses_standard_retries():
    tree = ast.parse((ENTRYPOINTS / "deploy_endpoint.py").read_text(encoding="utf-8"))
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
             and node.func.attr == "client"]
    assert calls
    for call in calls:
        assert any(keyword.arg == "config" for keyword in call.keywords), ast.unparse(call)
        assert "standard" in ast.unparse(call) or "RETRY" in ast.unparse(call), ast.unparse(call)
