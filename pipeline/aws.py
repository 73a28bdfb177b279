"""Act on AWS: upsert, start, status, schedule, unschedule and teardown of the pipeline built by ``build.py``.

Every call goes through :func:`clients` (botocore ``standard`` retry mode, the config's region; the endpoint
comes from ``AWS_ENDPOINT_URL`` when set, which is how the tests reach moto) and every AWS error surfaces as one
:class:`~pipeline.errors.UserError` that names the failed operation and the fix (see :func:`aws_errors`). Messages
never carry a credential: botocore's own errors name the missing thing, not its value (docs/security.md).
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import io
import json
import re
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import botocore.session
from botocore.config import Config as BotoConfig
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
    SSOError,
    TokenRetrievalError,
)

from pipeline import release
from pipeline._entrypoints import ENTRYPOINTS_DIR
from pipeline.config import Config
from pipeline.errors import UserError

#: botocore retries: "standard" mode retries throttling and transient errors with exponential backoff and jitter
#: (https://docs.aws.amazon.com/sdkref/latest/guide/feature-retry-behavior.html), at most 5 attempts per call.
RETRY_MODE, MAX_ATTEMPTS = "standard", 5
RETRY_CONFIG = BotoConfig(retries={"mode": RETRY_MODE, "total_max_attempts": MAX_ATTEMPTS})  # first try included
LAMBDA_RUNTIME = "python3.12"
LAMBDA_HANDLER = "deploy_endpoint.handler"
TERMINAL_STATUSES = ("Succeeded", "Failed", "Stopped")

# What each AWS error code usually means for this tool, and the fix.
_FIXES = {
    "AccessDenied": "the caller lacks a permission: grant the action named above (docs/aws.md lists them)",
    "AccessDeniedException": "the caller lacks a permission: grant the action named above (docs/aws.md lists them)",
    "ExpiredToken": "your AWS session token expired: refresh your credentials (e.g. `aws sso login`)",
    "ExpiredTokenException": "your AWS session token expired: refresh your credentials (e.g. `aws sso login`)",
    "UnrecognizedClientException": "the credentials are not valid in this account/region: check AWS_PROFILE",
    "InvalidClientTokenId": "the credentials are not valid: check AWS_PROFILE / AWS_ACCESS_KEY_ID",
    "NoSuchBucket": "create the bucket (`aws s3 mb s3://<bucket>`) or set `bucket` in pipeline.yaml",
    "ResourceLimitExceeded": "an account quota is reached: request an increase in Service Quotas or use a "
    "smaller instance type / fewer parallel jobs",
    "ThrottlingException": "AWS throttled the calls after retries: wait a minute and run it again",
    "InvalidAccessKeyId": "the access key is not valid: check AWS_PROFILE / AWS_ACCESS_KEY_ID",
    "SignatureDoesNotMatch": "the secret key does not match the access key: check AWS_PROFILE / your credentials",
}
# A role that is missing or does not trust its service shows up as one of these codes with "role" in the message
# (SageMaker ValidationException "Could not assume role", Lambda InvalidParameterValueException "The role defined
# for the function cannot be assumed by Lambda", Scheduler ValidationException "The execution role you provide...").
# (An AccessDenied on iam:PassRole is the caller's missing permission, not a missing role: _FIXES covers it.)
_ROLE_CODES = ("ValidationException", "InvalidParameterValueException")
_ROLE_WORDS = ("assume", "does not exist", "not exist", "not found", "cannot be", "trust")
ROLE_FIX = (
    "the IAM role in pipeline.yaml (role_arn, deploy.lambda_role_arn or schedule.role_arn) is missing or does not "
    "trust its service: create it from the trust and policy files in docs/iam/ (docs/aws.md, step 2) and set its ARN"
)
SSO_FIX = "your AWS SSO session expired or was never started: run `aws sso login` (or set other credentials)"


def clients(config: Config) -> boto3.Session:
    """A boto3 session in the config's region whose every client uses :data:`RETRY_MODE` with :data:`MAX_ATTEMPTS`.

    The retry settings are put on the session, not only on :func:`client`'s clients, so the clients the SageMaker
    SDK makes from it (``schedule``) retry the same way; they override ``AWS_RETRY_MODE`` and the config file.
    """
    core = botocore.session.Session()
    core.set_config_variable("retry_mode", RETRY_MODE)
    core.set_config_variable("max_attempts", MAX_ATTEMPTS)
    return boto3.Session(botocore_session=core, region_name=config.region)


def client(session: boto3.Session, service: str):
    """A client of ``service`` with standard retries."""
    return session.client(service, config=RETRY_CONFIG)


@contextlib.contextmanager
def aws_errors(action: str):
    """Turn botocore errors raised inside into one UserError: ``<action> failed: <AWS message>. Fix: <fix>``.

    The fix comes from the error code (:data:`_FIXES`: credentials, expired token, missing bucket, quotas,
    throttling), or :data:`ROLE_FIX` when the service says a role is missing or cannot be assumed; missing or
    partial credentials and an expired SSO session have their own messages. Tracebacks stay out of the CLI's output
    (the UserError is printed as one ``error:`` line by ``pipeline.cli.main``).
    """
    try:
        yield
    except (NoCredentialsError, PartialCredentialsError) as error:
        raise UserError(
            f"{action} failed: no AWS credentials found. Fix: run `aws configure` or `aws sso login`, or set "
            "AWS_PROFILE (docs/aws.md, first run)"
        ) from error
    except (SSOError, TokenRetrievalError) as error:
        raise UserError(f"{action} failed: {error}. Fix: {SSO_FIX}") from error
    except NoRegionError as error:
        raise UserError(f"{action} failed: no AWS region. Fix: set `region` in pipeline.yaml") from error
    except EndpointConnectionError as error:
        raise UserError(f"{action} failed: cannot reach {error.kwargs.get('endpoint_url')}. Fix: check the "
                        "network, the region, or AWS_ENDPOINT_URL") from error
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        message = (error.response.get("Error", {}).get("Message") or str(error)).rstrip(". ")
        operation = getattr(error, "operation_name", "")
        fix = ROLE_FIX if _role_problem(code, message) else _FIXES.get(code)
        fix = fix or "check the names and ARNs in pipeline.yaml against your account"
        raise UserError(f"{action} failed: {operation} returned {code}: {message}. Fix: {fix}") from error
    except BotoCoreError as error:
        raise UserError(f"{action} failed: {error}") from error


def _role_problem(code: str, message: str) -> bool:
    lowered = message.lower()
    return code in _ROLE_CODES and "role" in lowered and any(word in lowered for word in _ROLE_WORDS)


def _error_code(error: ClientError) -> str:
    return error.response.get("Error", {}).get("Code", "")


def _not_found(error: ClientError) -> bool:
    message = error.response.get("Error", {}).get("Message", "")
    missing = ("not found", "not exist", "could not find", "cannot find")
    return _error_code(error) in ("ResourceNotFound", "ResourceNotFoundException", "404", "NoSuchKey", "NotFound") or (
        _error_code(error) == "ValidationException" and any(text in message.lower() for text in missing)
    )


def _missing_pipeline(config: Config) -> UserError:
    return UserError(
        f"pipeline {config.pipeline_name} does not exist in {config.region}. Fix: run `python -m pipeline upsert` first"
    )


#: EventBridge Scheduler CreateSchedule ``Name``: 1-64 characters of ``[0-9a-zA-Z-_.]`` (Scheduler API reference;
#: botocore's scheduler model). A pipeline name may have 256.
SCHEDULE_NAME_MAX = 64


def schedule_name(config: Config) -> str:
    """The EventBridge Scheduler schedule of this pipeline: ``<pipeline_name>-schedule``, at most
    :data:`SCHEDULE_NAME_MAX` characters: a longer pipeline name is cut and an 8-digit hash of the whole name keeps
    two long names that share a beginning apart (``<start of name>-<sha256[:8]>-schedule``)."""
    name = f"{config.pipeline_name}-schedule"
    if len(name) <= SCHEDULE_NAME_MAX:
        return name
    digest = hashlib.sha256(config.pipeline_name.encode()).hexdigest()[:8]
    keep = SCHEDULE_NAME_MAX - len(f"-{digest}-schedule")
    return f"{config.pipeline_name[:keep].rstrip('-')}-{digest}-schedule"


# ---------------------------------------------------------------------------------------------------- IAM

IAM_DIR = Path(__file__).resolve().parent.parent / "docs" / "iam"


def dlc_registry_account(config: Config) -> str:
    """The AWS account whose ECR registry serves the PyTorch training and inference images in the config's region.

    Read from the SageMaker SDK's image URI config (``image_uris.retrieve``), the same source the definition's
    images come from: it is 763104351884 in most regions and another account in others (ap-east-1, me-south-1,
    the China and GovCloud regions...). Raises UserError when the two scopes disagree (one placeholder cannot
    hold both).
    """
    from sagemaker import image_uris

    from pipeline.session import quiet_sdk

    fw = config.framework
    with quiet_sdk():
        accounts = {
            image_uris.retrieve("pytorch", region=config.region, version=fw.version, py_version=fw.py_version,
                                instance_type=config.instances.training_type, image_scope=scope).split(".", 1)[0]
            for scope in ("training", "inference")
        }  # fmt: skip
    if len(accounts) != 1:
        raise UserError(f"the PyTorch images of {config.region} come from several accounts ({', '.join(accounts)}); "
                        "grant ecr:BatchGetImage on each registry by hand")
    return accounts.pop()


def iam_documents(config: Config) -> dict[str, str]:
    """``docs/iam/*.json`` with ``DLC_ACCOUNT_ID`` (:func:`dlc_registry_account`), ``ACCOUNT_ID`` (the account of
    ``role_arn``) and ``REGION`` filled in for ``config``: file name -> JSON text."""
    values = {"DLC_ACCOUNT_ID": dlc_registry_account(config), "ACCOUNT_ID": config.role_arn.split(":")[4],
              "REGION": config.region}  # fmt: skip
    documents = {}
    for path in sorted(IAM_DIR.glob("*.json")):
        text = path.read_text(encoding="utf-8")
        for placeholder, value in values.items():  # DLC_ACCOUNT_ID before the ACCOUNT_ID it contains
            text = text.replace(placeholder, value)
        documents[path.name] = text
    return documents


# ---------------------------------------------------------------------------------------------------- upsert


@dataclass
class UpsertResult:
    pipeline_arn: str
    created: bool
    uploaded: list[str] = field(default_factory=list)
    already_there: list[str] = field(default_factory=list)
    lambda_function: str | None = None


def deploy_lambda_zip() -> bytes:
    """Zip of ``entrypoints/deploy_endpoint.py`` (the Lambda handler; boto3 only), deterministic bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        info = zipfile.ZipInfo("deploy_endpoint.py", date_time=(1980, 1, 1, 0, 0, 0))
        info.external_attr = 0o644 << 16
        archive.writestr(info, (Path(ENTRYPOINTS_DIR) / "deploy_endpoint.py").read_bytes())
    return buffer.getvalue()


def _upload(s3, uploads: dict[str, bytes], kms_key: str | None) -> tuple[list[str], list[str]]:
    uploaded, present = [], []
    for uri, data in uploads.items():
        bucket, key = uri[len("s3://") :].split("/", 1)
        try:
            s3.head_object(Bucket=bucket, Key=key)
            present.append(uri)  # content-hashed key: same key, same bytes
            continue
        except ClientError as error:
            # HeadObject of a missing key answers 404 to a caller with s3:ListBucket on the bucket and 403 to one
            # without (https://docs.aws.amazon.com/AmazonS3/latest/API/API_HeadObject.html, "Permissions").
            # docs/iam/operator-policy.json grants ListBucket on the pipeline's prefix; should a 403 come anyway,
            # it says only "cannot tell": upload, since the key is content-hashed (writing it again writes the same
            # bytes) and a PutObject that is denied too fails with its own AccessDenied.
            if _error_code(error) not in ("404", "NoSuchKey", "NotFound", "403", "Forbidden", "AccessDenied"):
                raise
        extra = {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": kms_key} if kms_key else {}
        s3.put_object(Bucket=bucket, Key=key, Body=data, **extra)
        uploaded.append(uri)
    return uploaded, present


def _ensure_model_package_group(sm, config: Config) -> None:
    try:
        sm.describe_model_package_group(ModelPackageGroupName=config.model_package_group)
    except ClientError as error:
        if not _not_found(error):
            raise
        sm.create_model_package_group(
            ModelPackageGroupName=config.model_package_group,
            ModelPackageGroupDescription=f"Image classifiers trained by pipeline {config.pipeline_name}",
            Tags=_tags(config),
        )


def _upsert_lambda(lam, config: Config) -> str:
    deploy = config.deploy
    code = deploy_lambda_zip()
    settings = {
        "Role": deploy.lambda_role_arn,
        "Handler": LAMBDA_HANDLER,
        "Runtime": LAMBDA_RUNTIME,
        "Timeout": deploy.lambda_timeout_s,
        "Description": "Deploy a registered model package to a stage endpoint (staging or production)",
    }
    try:
        lam.get_function(FunctionName=deploy.lambda_function_name)
    except ClientError as error:
        if not _not_found(error):
            raise
        response = lam.create_function(
            FunctionName=deploy.lambda_function_name, Code={"ZipFile": code}, Tags=dict(config.tags), **settings
        )
        return response["FunctionArn"]
    lam.update_function_code(FunctionName=deploy.lambda_function_name, ZipFile=code)
    with contextlib.suppress(AttributeError):  # waiters exist in botocore; keep going on old clients
        lam.get_waiter("function_updated_v2").wait(FunctionName=deploy.lambda_function_name)
    response = lam.update_function_configuration(FunctionName=deploy.lambda_function_name, **settings)
    return response["FunctionArn"]


def _tags(config: Config) -> list[dict[str, str]]:
    return [{"Key": key, "Value": value} for key, value in sorted(config.tags.items())]


def upsert(config: Config) -> UpsertResult:
    """Create or update everything a run needs, in order: the code bundle and runproc scripts in S3 (skipped when
    the content-hashed key is there), the model package group, the deploy Lambda and the SQS queue of its callback
    step (``deploy.enabled``), the approval and notification rules, then the pipeline itself. Safe to run again.
    Raises UserError on any AWS error, and before any AWS call when :func:`pipeline.check.check` finds a
    constraint the definition breaks (one line per finding).
    """
    from pipeline.build import build
    from pipeline.check import check

    built = build(config)
    findings = check(config, built.definition)
    if findings:
        raise UserError(f"pipeline check found {len(findings)} problem(s); nothing was sent to AWS:\n"
                        + "\n".join(str(f) for f in findings))
    session = clients(config)
    sm = client(session, "sagemaker")
    with aws_errors(f"uploading the code to s3://{config.bucket}"):
        uploaded, present = _upload(client(session, "s3"), built.uploads, config.security.kms_key_id)
    with aws_errors(f"creating model package group {config.model_package_group}"):
        _ensure_model_package_group(sm, config)
    function = None
    if config.deploy.enabled:
        with aws_errors(f"creating or updating Lambda function {config.deploy.lambda_function_name}"):
            function = _upsert_lambda(client(session, "lambda"), config)
        release.upsert_outcome_queue(config, session, function)
    release.upsert_rules(config, session, function)
    request = {
        "PipelineName": config.pipeline_name,
        "PipelineDefinition": built.definition,
        "PipelineDescription": f"Image classification: split, tune, train, debug, evaluate, gate, register"
        f"{', deploy' if config.deploy.enabled else ''}",
        "RoleArn": config.role_arn,
    }
    with aws_errors(f"upserting pipeline {config.pipeline_name}"):
        try:
            sm.describe_pipeline(PipelineName=config.pipeline_name)
            exists = True
        except ClientError as error:
            if not _not_found(error):
                raise
            exists = False
        if exists:
            arn = sm.update_pipeline(**request)["PipelineArn"]
        else:
            arn = sm.create_pipeline(**request, ClientRequestToken=str(uuid.uuid4()), Tags=_tags(config))[
                "PipelineArn"
            ]
    return UpsertResult(arn, not exists, uploaded, present, function)


# ---------------------------------------------------------------------------------------------------- start


def parse_params(pairs: list[str]) -> dict[str, str]:
    """``["AccuracyThreshold=0.95"]`` -> ``{"AccuracyThreshold": "0.95"}``. Raises UserError on ``K`` without ``=``."""
    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"--param {pair!r}: write it as Name=Value, e.g. --param AccuracyThreshold=0.95")
        params[key] = value
    return params


def start(config: Config, params: dict[str, str], display_name: str | None = None) -> str:
    """Start an execution of the upserted pipeline with parameter overrides; return the execution ARN.

    Parameter names are checked against the pipeline's definition in AWS (an unknown name is a UserError naming
    the closest one); omitted ones take their defaults. Instance-type and count overrides are checked first,
    offline (:func:`pipeline.check.parameter_findings`: valid types, the volume-KMS rule).
    """
    from pipeline.check import parameter_findings

    findings = parameter_findings(config, params)
    if findings:
        raise UserError("\n".join(str(f) for f in findings))
    sm = client(clients(config), "sagemaker")
    with aws_errors(f"reading pipeline {config.pipeline_name}"):
        try:
            described = sm.describe_pipeline(PipelineName=config.pipeline_name)
        except ClientError as error:
            if _not_found(error):
                raise _missing_pipeline(config) from error
            raise
    names = [p["Name"] for p in json.loads(described["PipelineDefinition"]).get("Parameters", [])]
    for key in params:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UserError(f"--param {key}: the pipeline has no such parameter{hint} (parameters: {', '.join(names)})")
    request = {
        "PipelineName": config.pipeline_name,
        "PipelineParameters": [{"Name": k, "Value": v} for k, v in sorted(params.items())],
        "ClientRequestToken": str(uuid.uuid4()),
    }
    if display_name:
        request["PipelineExecutionDisplayName"] = display_name
    with aws_errors(f"starting pipeline {config.pipeline_name}"):
        return sm.start_pipeline_execution(**request)["PipelineExecutionArn"]


# ---------------------------------------------------------------------------------------------------- status


@dataclass
class StepStatus:
    name: str
    status: str
    started: str | None = None
    ended: str | None = None
    failure_reason: str | None = None
    cache_hit: bool = False


@dataclass
class ExecutionStatus:
    """One execution: its ARN, status, failure reason and steps (``steps`` is None when the service cannot
    list them, e.g. moto; ``note`` then says so)."""

    arn: str
    status: str
    failure_reason: str | None
    started: str | None
    steps: list[StepStatus] | None
    note: str | None = None

    @property
    def done(self) -> bool:
        return self.status in TERMINAL_STATUSES


def _iso(value) -> str | None:
    return value.isoformat(timespec="seconds") if hasattr(value, "isoformat") else value


def status(config: Config, execution_arn: str | None = None) -> ExecutionStatus:
    """Status of ``execution_arn`` (default: the latest execution of the pipeline) and of its steps.

    Raises UserError when the pipeline has no execution. Steps come from ListPipelineExecutionSteps; where the
    service does not implement it (moto 5.2.5) ``steps`` is None and ``note`` explains.
    """
    sm = client(clients(config), "sagemaker")
    with aws_errors(f"reading executions of {config.pipeline_name}"):
        if not execution_arn:
            try:
                summaries = sm.list_pipeline_executions(
                    PipelineName=config.pipeline_name, SortBy="CreationTime", SortOrder="Descending", MaxResults=1
                )["PipelineExecutionSummaries"]
            except ClientError as error:
                if _not_found(error):
                    raise _missing_pipeline(config) from error
                raise
            if not summaries:
                raise UserError(f"pipeline {config.pipeline_name} has no execution yet. Fix: python -m pipeline start")
            execution_arn = summaries[0]["PipelineExecutionArn"]
        described = sm.describe_pipeline_execution(PipelineExecutionArn=execution_arn)
    steps, note = None, None
    # Best effort, with fewer retries: the step list only decorates the display, and a service without it
    # (moto answers HTTP 500) should not hold the status for the full backoff.
    few_retries = BotoConfig(retries={"mode": "standard", "max_attempts": 2})
    steps_client = clients(config).client("sagemaker", config=few_retries)
    try:
        pages = steps_client.get_paginator("list_pipeline_execution_steps").paginate(
            PipelineExecutionArn=execution_arn, SortOrder="Ascending"
        )
        steps = [
            StepStatus(
                name=s["StepName"],
                status=s.get("StepStatus", "Unknown"),
                started=_iso(s.get("StartTime")),
                ended=_iso(s.get("EndTime")),
                failure_reason=s.get("FailureReason"),
                cache_hit="CacheHitResult" in s,
            )
            for page in pages
            for s in page.get("PipelineExecutionSteps", [])
        ]
    except ClientError as error:
        if _error_code(error) not in ("NotImplemented", "InternalFailure", "InternalError", "500", "501"):
            with aws_errors("listing the execution's steps"):
                raise
        note = f"the service does not list execution steps (HTTP {_error_code(error)}); step details unavailable"
    return ExecutionStatus(
        arn=execution_arn,
        status=described.get("PipelineExecutionStatus", "Unknown"),
        failure_reason=described.get("FailureReason"),
        started=_iso(described.get("CreationTime")),
        steps=steps,
        note=note,
    )


# ---------------------------------------------------------------------------------------------------- schedule

_RATE = re.compile(r"^(\d+) (minute|minutes|hour|hours|day|days)$")


def schedule_expression(cron: str | None = None, rate: str | None = None) -> tuple[str, str]:
    """Validate an EventBridge Scheduler expression; return ``("cron", body)`` or ``("rate", body)``.

    ``cron``: six fields ``minutes hours day-of-month month day-of-week year`` with ``?`` in day-of-month or
    day-of-week (EventBridge rule; e.g. ``0 3 * * ? *``). ``rate``: ``<n> minute(s)|hour(s)|day(s)``, singular
    unit only for 1 (e.g. ``1 day``, ``12 hours``). A ``cron(...)``/``rate(...)`` wrapper is accepted.
    Source: https://docs.aws.amazon.com/scheduler/latest/UserGuide/schedule-types.html. Raises UserError.
    """
    if bool(cron) == bool(rate):
        raise UserError("give exactly one of --cron '0 3 * * ? *' or --rate '1 day'")
    if rate:
        body = rate.strip().removeprefix("rate(").removesuffix(")").strip()
        match = _RATE.match(body)
        if not match or int(match.group(1)) < 1:
            raise UserError(f"--rate {rate!r}: write '<n> minutes|hours|days', e.g. --rate '1 day' or '12 hours'")
        n, unit = int(match.group(1)), match.group(2)
        if (n == 1) != (not unit.endswith("s")):
            fixed = f"{n} {unit.rstrip('s') if n == 1 else unit + 's'}"
            raise UserError(f"--rate {rate!r}: EventBridge wants '{fixed}' (singular unit only for 1)")
        return "rate", body
    body = cron.strip().removeprefix("cron(").removesuffix(")").strip()
    fields = body.split()
    if len(fields) != 6:
        raise UserError(
            f"--cron {cron!r}: EventBridge cron has 6 fields (minutes hours day-of-month month day-of-week year), "
            f"got {len(fields)}; e.g. --cron '0 3 * * ? *' (03:00 UTC daily)"
        )
    if "?" not in (fields[2], fields[4]) or fields[2] == fields[4] == "?":
        raise UserError(f"--cron {cron!r}: put '?' in exactly one of day-of-month (3rd) and day-of-week (5th) fields")
    return "cron", body


def _sdk_pipeline(config: Config):
    """A Pipeline object bound to a real SDK session (for the SDK's trigger helpers), parameters included."""
    from sagemaker.session import Session
    from sagemaker.workflow.pipeline import Pipeline

    from pipeline.build import build
    from pipeline.session import SDK_CONFIG, quiet_sdk

    parameters = build(config).pipeline.parameters
    with quiet_sdk():
        session = Session(boto_session=clients(config), sagemaker_config=SDK_CONFIG)
    return Pipeline(name=config.pipeline_name, parameters=parameters, sagemaker_session=session)


def schedule(config: Config, cron: str | None = None, rate: str | None = None) -> str:
    """Create or update the pipeline's EventBridge Scheduler schedule (SDK ``PipelineSchedule`` +
    ``put_triggers``); return the schedule ARN. Needs ``schedule.role_arn``; every parameter has a default."""
    from sagemaker.workflow.triggers import PipelineSchedule

    kind, body = schedule_expression(cron, rate)
    if not config.schedule.role_arn:
        raise UserError("schedule.role_arn is not set. Fix: create the role of docs/iam/scheduler-role.json and set it")
    if kind == "rate":  # the SDK takes a rate as (value, unit)
        value, unit = body.split()
        trigger = PipelineSchedule(name=schedule_name(config), rate=(int(value), unit))
    else:
        trigger = PipelineSchedule(name=schedule_name(config), cron=body)
    pipeline = _sdk_pipeline(config)
    with aws_errors(f"scheduling pipeline {config.pipeline_name}"):
        try:
            arns = pipeline.put_triggers([trigger], role_arn=config.schedule.role_arn)
        except RuntimeError as error:  # the SDK's "pipeline does not exist"
            raise UserError(f"{error} Fix: run `python -m pipeline upsert` first") from error
        except ClientError as error:  # the SDK's DescribePipeline of a pipeline not upserted yet
            if _not_found(error) and getattr(error, "operation_name", "") == "DescribePipeline":
                raise _missing_pipeline(config) from error
            raise
    return arns[0]


def unschedule(config: Config) -> bool:
    """Delete the pipeline's schedule; True if one was deleted, False if there was none (safe to run twice)."""
    scheduler = client(clients(config), "scheduler")
    with aws_errors(f"deleting schedule {schedule_name(config)}"):
        try:
            scheduler.delete_schedule(Name=schedule_name(config))
        except ClientError as error:
            if _not_found(error):
                return False
            raise
    return True


# ---------------------------------------------------------------------------------------------------- teardown


def teardown(config: Config, delete_pipeline: bool = False) -> list[str]:
    """Delete what keeps costing money or acting: both stage endpoints, their endpoint configs, models (named
    ``<endpoint>-v<version>...`` by the deploy Lambda) and rollback alarms, the approval and notification rules
    (:mod:`pipeline.release`), the schedule; with ``delete_pipeline`` also the pipeline, the deploy Lambda and its
    callback queue. The model package group is kept (registry history). Returns what was deleted; safe to run
    twice (missing things are skipped)."""
    session = clients(config)
    sm = client(session, "sagemaker")
    deleted = release.delete_endpoints(config, session) + release.delete_rules(config, session)
    if unschedule(config):
        deleted.append(f"schedule {schedule_name(config)}")
    if delete_pipeline:
        with aws_errors(f"deleting pipeline {config.pipeline_name}"):
            try:
                sm.delete_pipeline(PipelineName=config.pipeline_name, ClientRequestToken=str(uuid.uuid4()))
                deleted.append(f"pipeline {config.pipeline_name}")
            except ClientError as error:
                if not _not_found(error):
                    raise
        if config.deploy.enabled or config.deploy.lambda_function_name:
            deleted += release.delete_outcome_queue(config, session)
            with aws_errors(f"deleting Lambda function {config.deploy.lambda_function_name}"):
                try:
                    client(session, "lambda").delete_function(FunctionName=config.deploy.lambda_function_name)
                    deleted.append(f"Lambda function {config.deploy.lambda_function_name}")
                except ClientError as error:
                    if not _not_found(error):
                        raise
    return deleted
