"""Least privilege: every AWS action the code calls, and every action SageMaker needs to run the definition's
steps, is granted by the policy of the identity that makes the call; no policy has a wildcard action; the
definition carries the config's KMS key, VPC and network isolation into every job.

How the actions are found (statically, so a new call cannot be forgotten):

- boto3 client method calls in ``pipeline/`` and ``entrypoints/deploy_endpoint.py``: a client is any call
  ``...client(..., "<service>")`` (``boto3.client``, ``session.client``, ``pipeline.aws.client``); the names bound to
  it (assignments, and parameters of same-file functions it is passed to) are followed; ``get_paginator("op")`` and
  ``get_waiter("w")`` count as the operations they call. Operation names come from botocore's service models, and
  map to IAM actions ``<prefix>:<Operation>`` except where S3's IAM names differ (HeadObject -> s3:GetObject).
- Calls made for us by the SageMaker SDK (``Pipeline.put_triggers`` in ``aws.schedule``) are listed by hand below.
- Each definition step type -> the actions the pipeline execution role needs for it (Pipelines IAM reference:
  https://docs.aws.amazon.com/sagemaker/latest/dg/build-and-manage-access.html and the API of each Create* call).
A call the scanner sees but cannot attribute to a client fails the test, so the scan never silently misses one.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from functools import cache
from pathlib import Path

import botocore.session
import pytest
from botocore import xform_name

from pipeline.instances import has_instance_store
from tests.conftest import ROOT

IAM = ROOT / "docs" / "iam"
#: Which identity makes the calls of each scanned file (docs/aws.md, step 2).
DEPLOY_FUNCTION = "entrypoints/deploy_endpoint.py"
#: The jobs run as the pipeline execution role; this module reads a job's tags to find its execution's run.
JOB_EXECUTION_RUN = "entrypoints/imgclf/execution_run.py"
OPERATOR_POLICY = "operator-policy.json"
EXECUTION_POLICY = "pipeline-execution-role.json"
POLICY_OF_FILE = {DEPLOY_FUNCTION: "deploy-lambda-role.json", JOB_EXECUTION_RUN: EXECUTION_POLICY}
SCHEDULER_POLICY = "scheduler-role.json"
IAM_PREFIX = {"sagemaker": "sagemaker", "sagemaker-runtime": "sagemaker", "s3": "s3", "lambda": "lambda",
              "scheduler": "scheduler", "iam": "iam", "sts": "sts", "logs": "logs", "events": "events",
              "sns": "sns", "cloudwatch": "cloudwatch", "sqs": "sqs"}
#: S3 operations whose IAM actions have other names. HeadObject: "you must have the s3:GetObject permission", and
#: "If the object you request doesn't exist ... If you have the s3:ListBucket permission on the bucket, Amazon S3
#: returns an HTTP status code 404 Not Found error. If you don't have the s3:ListBucket permission, Amazon S3
#: returns an HTTP status code 403 Forbidden error" (https://docs.aws.amazon.com/AmazonS3/latest/API/API_HeadObject.html):
#: a HeadObject that tells a missing key apart needs both. ListObjectsV2 needs s3:ListBucket.
S3_ACTIONS = {"HeadObject": ("GetObject", "ListBucket"), "ListObjectsV2": ("ListBucket",),
              "ListObjects": ("ListBucket",), "HeadBucket": ("ListBucket",)}
#: Calls the SageMaker SDK makes on our behalf: ``aws.schedule`` -> ``Pipeline.put_triggers`` describes the
#: pipeline, then ``EventBridgeSchedulerHelper.upsert_schedule`` updates the schedule or creates it.
SDK_CALLS = {"pipeline/aws.py": {"sagemaker:DescribePipeline", "scheduler:UpdateSchedule", "scheduler:CreateSchedule"}}
#: Parameters that carry a role to the service: the caller needs iam:PassRole on that role.
PASSES_ROLE = {"sagemaker:CreatePipeline", "sagemaker:UpdatePipeline", "lambda:CreateFunction",
               "lambda:UpdateFunctionConfiguration", "scheduler:CreateSchedule", "scheduler:UpdateSchedule",
               "sagemaker:CreateModel"}
#: What the pipeline execution role needs per step type of the definition.
STEP_ACTIONS = {
    "Processing": {"sagemaker:CreateProcessingJob", "sagemaker:DescribeProcessingJob", "sagemaker:StopProcessingJob",
                   "sagemaker:AddTags", "iam:PassRole", "s3:GetObject", "s3:PutObject", "s3:ListBucket",
                   "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:GetAuthorizationToken",
                   "logs:CreateLogStream", "logs:PutLogEvents"},
    "Training": {"sagemaker:CreateTrainingJob", "sagemaker:DescribeTrainingJob", "sagemaker:StopTrainingJob",
                 "sagemaker:AddTags", "iam:PassRole", "s3:GetObject", "s3:PutObject", "s3:ListBucket",
                 "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:GetAuthorizationToken",
                 "logs:CreateLogStream", "logs:PutLogEvents", "cloudwatch:PutMetricData"},
    "Tuning": {"sagemaker:CreateHyperParameterTuningJob", "sagemaker:DescribeHyperParameterTuningJob",
               "sagemaker:StopHyperParameterTuningJob", "sagemaker:ListTrainingJobsForHyperParameterTuningJob",
               "sagemaker:CreateTrainingJob", "sagemaker:DescribeTrainingJob", "sagemaker:AddTags", "iam:PassRole"},
    "RegisterModel": {"sagemaker:CreateModelPackage", "sagemaker:DescribeModelPackage",
                      "sagemaker:DescribeModelPackageGroup", "sagemaker:AddTags"},
    "Model": {"sagemaker:CreateModel", "iam:PassRole"},
    "Lambda": {"lambda:InvokeFunction"},
    # "SageMaker Pipelines sends a message to a customer-specified Amazon SQS queue" (Callback step)
    "Callback": {"sqs:SendMessage"},
    "Condition": set(),
    "Fail": set(),
}
#: Extra actions when the definition uses a KMS key / a VPC (KMS: https://docs.aws.amazon.com/sagemaker/latest/dg/
#: api-permissions-reference.html, "kms:CreateGrant" for encrypted volumes; VPC: .../train-vpc.html#train-vpc-vpc).
KMS_ACTIONS = {"kms:CreateGrant", "kms:Decrypt", "kms:DescribeKey", "kms:Encrypt", "kms:GenerateDataKey"}
VPC_ACTIONS = {"ec2:CreateNetworkInterface", "ec2:CreateNetworkInterfacePermission", "ec2:DeleteNetworkInterface",
               "ec2:DeleteNetworkInterfacePermission", "ec2:DescribeNetworkInterfaces", "ec2:DescribeVpcs",
               "ec2:DescribeDhcpOptions", "ec2:DescribeSubnets", "ec2:DescribeSecurityGroups"}
SECURITY = ["--set", "security.kms_key_id=arn:aws:kms:us-east-1:111122223333:key/0a1b2c3d-1111-2222-3333-444455556666",
            "--set", "security.subnets=[subnet-0aaa1111, subnet-0bbb2222]", "--set",
            "security.security_group_ids=[sg-0ccc3333]", "--set", "security.enable_network_isolation=true", "--set",
            "security.encrypt_inter_container_traffic=true",
            # network isolation gives the jobs no internet: pretrained weights come through the weights channel
            "--set", "training.weights_uri=s3://sagemaker-image-classification/weights/resnet50.pth",
            "--set", "training.weights=resnet50.pth"]


@cache
def operations(service: str) -> dict[str, str]:
    """``{"describe_pipeline": "DescribePipeline", ...}`` from botocore's model of ``service``."""
    model = botocore.session.get_session().get_service_model(service)
    return {xform_name(name): name for name in model.operation_names}


@cache
def waiter_operation(service: str, waiter: str) -> str:
    client = botocore.session.get_session().create_client(service, region_name="us-east-1",
                                                          aws_access_key_id="x", aws_secret_access_key="y")
    return client.get_waiter(waiter).config.operation


#: IAM actions whose name is not their API operation's (Lambda's Invoke API is lambda:InvokeFunction; InvokeEndpoint
#: is an operation of the sagemaker-runtime API under the sagemaker prefix).
IAM_NAMES = {"lambda:Invoke": "lambda:InvokeFunction"}
IAM_ONLY_ACTIONS = {"lambda:InvokeFunction", "sagemaker:InvokeEndpoint"}


def iam_actions(service: str, operation: str) -> set[str]:
    """The IAM actions a call of ``operation`` needs (several for S3's HeadObject: :data:`S3_ACTIONS`)."""
    names = S3_ACTIONS.get(operation, (operation,)) if service == "s3" else (operation,)
    actions = {f"{IAM_PREFIX[service]}:{name}" for name in names}
    return {IAM_NAMES.get(action, action) for action in actions}


def _client_service(node: ast.AST) -> str | None:
    """The service of ``...client(..., "<service>", ...)``, else None."""
    if isinstance(node, ast.Call):
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        if name == "client":
            for arg in node.args:
                if isinstance(arg, ast.Constant) and arg.value in IAM_PREFIX:
                    return arg.value
    return None


def scan_file(path: Path) -> tuple[set[str], list[str]]:
    """``(IAM actions called, calls that look like AWS operations but whose client is unknown)``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typed: dict[str, str] = {}  # name -> service (module-wide: the scanned modules reuse names consistently)

    def service_of(node: ast.AST) -> str | None:
        found = _client_service(node)
        if found:
            return found
        if isinstance(node, ast.Name):
            return typed.get(node.id)
        if isinstance(node, ast.BoolOp):  # x = x or boto3.client("sagemaker")
            return next((s for s in map(service_of, node.values) if s), None)
        return None

    functions = {node.name: node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
    for _ in range(3):  # propagate through assignments and same-file calls until stable
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and (service := service_of(node.value)):
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        typed[target.id] = service
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in functions:
                params = [a.arg for a in functions[node.func.id].args.args]
                for index, arg in enumerate(node.args):
                    if index < len(params) and (service := service_of(arg)):
                        typed[params[index]] = service
    called, unknown = set(), []
    every_operation = {name for service in IAM_PREFIX for name in operations(service)}
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        method, receiver = node.func.attr, node.func.value
        service = service_of(receiver)
        literal = node.args[0].value if node.args and isinstance(node.args[0], ast.Constant) else None
        if service and method == "get_paginator":
            called |= iam_actions(service, operations(service)[literal])
        elif service and method == "get_waiter":
            called |= iam_actions(service, waiter_operation(service, literal))
        elif service and method in operations(service):
            called |= iam_actions(service, operations(service)[method])
        elif service is None and method in every_operation and method not in ("close",):
            unknown.append(f"{path.relative_to(ROOT)}:{node.lineno} {ast.unparse(node.func)}")
    return called, unknown


def aws_files() -> list[Path]:
    """The modules that talk to AWS: those that import boto3 or pipeline.aws (the offline session excluded)."""
    files = [ROOT / DEPLOY_FUNCTION, ROOT / JOB_EXECUTION_RUN]
    for path in sorted((ROOT / "pipeline").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        if path.name != "session.py" and ("boto3" in text or "from pipeline import aws" in text
                                          or "from pipeline.aws import" in text):
            files.append(path)
    return files


def policy_actions(name: str) -> set[str]:
    document = json.loads((IAM / name).read_text(encoding="utf-8"))
    actions = set()
    for statement in document["Statement"]:
        if statement["Effect"] == "Allow":
            value = statement["Action"]
            actions.update([value] if isinstance(value, str) else value)
    return actions


def definition(*overrides: str) -> dict:
    result = subprocess.run([sys.executable, "-m", "pipeline", "definition", *overrides], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def walk_steps(steps: list[dict]):
    for step in steps:
        yield step
        if step["Type"] == "Condition":
            yield from walk_steps(step["Arguments"].get("IfSteps", []))
            yield from walk_steps(step["Arguments"].get("ElseSteps", []))


@pytest.fixture(scope="module")
def secured_definition() -> dict:
    return definition(*SECURITY)


# -- the tests --------------------------------------------------------------------------------------------------


def test_policies_are_valid_and_have_no_wildcard_actions():
    policies = sorted(IAM.glob("*.json"))
    assert len(policies) >= 6
    for path in policies:
        document = json.loads(path.read_text(encoding="utf-8"))
        assert document["Version"] == "2012-10-17", path.name
        for statement in document["Statement"]:
            actions = statement["Action"]
            for action in [actions] if isinstance(actions, str) else actions:
                assert "*" not in action and "?" not in action, f"{path.name}: wildcard action {action}"
                prefix, _, name = action.partition(":")
                assert prefix and name, f"{path.name}: {action!r} is not service:Action"
                if prefix in ("sagemaker", "lambda", "scheduler", "logs", "ecr", "kms", "cloudwatch", "ec2"):
                    known = set(operations(prefix).values())
                    assert name in known or action in IAM_ONLY_ACTIONS, f"{path.name}: {action} is not an action"
            assert "NotAction" not in statement, path.name


def test_every_aws_call_in_the_code_is_granted_to_its_caller():
    files = aws_files()
    assert any(p.name == "aws.py" for p in files) and any(p.name == "client.py" for p in files)
    missing, unknown, seen = [], [], set()
    for path in files:
        called, not_attributed = scan_file(path)
        unknown += not_attributed
        relative = path.relative_to(ROOT).as_posix()
        called |= SDK_CALLS.get(relative, set())
        seen |= called
        policy = POLICY_OF_FILE.get(relative, OPERATOR_POLICY)
        granted = policy_actions(policy)
        if called & PASSES_ROLE:
            called.add("iam:PassRole")
        missing += [f"{relative}: {action} not in docs/iam/{policy}" for action in sorted(called - granted)]
    assert not unknown, f"calls whose client the scan cannot tell (bind the client to a name): {unknown}"
    assert not missing, "\n".join(missing)
    # The scan really sees the calls (a broken scanner would find nothing and pass).
    assert {"sagemaker:CreatePipeline", "s3:PutObject", "s3:ListBucket", "lambda:CreateFunction",
            "scheduler:DeleteSchedule", "sagemaker:ListPipelineExecutionSteps", "lambda:GetFunction",
            "sagemaker:InvokeEndpoint", "sagemaker:CreateEndpoint", "sagemaker:ListTags",
            "sagemaker:DescribeTrainingJob"} <= seen


def test_local_mode_makes_no_aws_call():
    """pipeline/local mimics SageMaker's API names in-process; it must not import an AWS client at all."""
    for path in (ROOT / "pipeline" / "local").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert "boto3" not in text and "botocore" not in text, path


@pytest.mark.parametrize("secured", [False, True])
def test_execution_role_grants_what_each_step_type_needs(secured, secured_definition):
    spec = secured_definition if secured else definition()
    types = {step["Type"] for step in walk_steps(spec["Steps"])}
    unknown = types - set(STEP_ACTIONS)
    assert not unknown, f"new step types {unknown}: add their actions to STEP_ACTIONS and the execution role"
    needed = set().union(*(STEP_ACTIONS[kind] for kind in types))
    granted = policy_actions(EXECUTION_POLICY)
    if secured:
        needed |= KMS_ACTIONS | VPC_ACTIONS
        granted |= policy_actions("kms-key-access.json") | policy_actions("pipeline-execution-vpc.json")
    assert needed <= granted, sorted(needed - granted)
    assert policy_actions(SCHEDULER_POLICY) == {"sagemaker:StartPipelineExecution"}


def test_operator_may_use_the_kms_key_it_uploads_with():
    """``upsert`` puts the code with SSE-KMS when security.kms_key_id is set: the key policy file covers it."""
    assert {"kms:GenerateDataKey", "kms:Decrypt"} <= policy_actions("kms-key-access.json")


def _jobs(spec: dict):
    for step in walk_steps(spec["Steps"]):
        if step["Type"] == "Tuning":
            yield step["Name"], step["Type"], step["Arguments"]["TrainingJobDefinition"]
        elif step["Type"] in ("Processing", "Training"):
            yield step["Name"], step["Type"], step["Arguments"]


def test_definition_passes_kms_vpc_and_network_isolation_to_every_job(secured_definition):
    key = SECURITY[1].split("=", 1)[1]
    vpc = {"SecurityGroupIds": ["sg-0ccc3333"], "Subnets": ["subnet-0aaa1111", "subnet-0bbb2222"]}
    jobs = list(_jobs(secured_definition))
    assert {kind for _, kind, _ in jobs} == {"Processing", "Training", "Tuning"}
    for name, kind, job in jobs:
        if kind == "Processing":
            assert job["ProcessingResources"]["ClusterConfig"]["VolumeKmsKeyId"] == key, name
            assert job["ProcessingOutputConfig"]["KmsKeyId"] == key, name
            network = job["NetworkConfig"]
            assert network["VpcConfig"] == vpc and network["EnableNetworkIsolation"] is True, name
            assert network["EnableInterContainerTrafficEncryption"] is True, name
        else:
            resources = job.get("ResourceConfig") or job["HyperParameterTuningResourceConfig"]
            # the default training type (ml.g4dn) has instance store: its disks take no KMS key (pipeline.instances)
            training_type = next(p["DefaultValue"] for p in secured_definition["Parameters"]
                                 if p["Name"] == "TrainingInstanceType")
            assert resources.get("VolumeKmsKeyId") == (None if has_instance_store(training_type) else key), name
            assert job["OutputDataConfig"]["KmsKeyId"] == key, name
            assert job["VpcConfig"] == vpc and job["EnableNetworkIsolation"] is True, name
            assert job["EnableInterContainerTrafficEncryption"] is True, name
    default = definition()
    for name, _, job in _jobs(default):  # off by default: nothing half-configured
        text = json.dumps(job)
        assert "KmsKeyId" not in text and "VpcConfig" not in text and '"EnableNetworkIsolation": true' not in text, name


def test_deploy_step_carries_the_security_settings_to_the_endpoint(secured_definition):
    deploy = next(step for step in walk_steps(secured_definition["Steps"]) if step["Type"] == "Lambda")
    inputs = json.dumps(deploy["Arguments"])
    key = SECURITY[1].split("=", 1)[1]
    assert key in inputs and "subnet-0aaa1111" in inputs and "sg-0ccc3333" in inputs
    assert "network_isolation" in inputs


def test_operator_lists_only_the_pipelines_prefix():
    """``upsert``'s HeadObject needs s3:ListBucket to see a missing key as 404 (S3_ACTIONS): the operator gets it on
    the bucket, limited by the ``s3:prefix`` condition to the config's prefix (pipeline.yaml ``prefix``)."""
    from pipeline.config import load_config

    config = load_config()
    document = json.loads((IAM / OPERATOR_POLICY).read_text(encoding="utf-8"))
    listing = [s for s in document["Statement"] if "s3:ListBucket" in s["Action"]]
    assert len(listing) == 1 and listing[0]["Resource"] == f"arn:aws:s3:::{config.bucket}"
    assert listing[0]["Condition"] == {"StringLike": {"s3:prefix": [f"{config.prefix}/*"]}}
    assert set(listing[0]["Action"]) == {"s3:ListBucket"}


#: MlflowClient methods -> the sagemaker-mlflow IAM actions of the REST calls they make (MLflow REST API
#: https://mlflow.org/docs/latest/api_reference/rest-api.html; actions of Amazon SageMaker with MLflow:
#: https://docs.aws.amazon.com/service-authorization/latest/reference/list_amazonsagemakerwithmlflow.html).
#: log_dict asks the server for the run's artifact location (GetRun), then writes to the artifact store.
MLFLOW_ACTIONS = {
    "get_experiment_by_name": {"GetExperimentByName"}, "create_experiment": {"CreateExperiment"},
    "create_run": {"CreateRun"}, "log_batch": {"LogBatch"}, "set_terminated": {"UpdateRun"},
    "update_run": {"UpdateRun"}, "log_dict": {"GetRun"}, "log_artifact": {"GetRun"}, "set_tag": {"SetTag"},
    "search_runs": {"SearchRuns"}, "delete_run": {"DeleteRun"},
}


def test_tracking_calls_of_the_jobs_are_granted_to_the_execution_role():
    """Every MlflowClient call in imgclf/tracking.py and imgclf/execution_run.py (the jobs run as the execution
    role) maps to a granted sagemaker-mlflow action; a new client method fails here until it is mapped and
    granted."""
    methods = set()
    for node in (node for name in ("tracking.py", "execution_run.py")
                 for node in ast.walk(ast.parse((ROOT / "entrypoints" / "imgclf" / name).read_text("utf-8")))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            receiver = ast.unparse(node.func.value)
            if receiver in ("client", "self.client"):
                methods.add(node.func.attr)
            elif node.func.attr == "_call" and node.args and isinstance(node.args[0], ast.Constant):
                methods.add(node.args[0].value)
    assert {"create_run", "log_batch", "set_terminated", "delete_run", "search_runs"} <= methods, methods
    unmapped = methods - set(MLFLOW_ACTIONS)
    assert not unmapped, f"map these MlflowClient methods to IAM actions: {unmapped}"
    needed = {f"sagemaker-mlflow:{action}" for method in methods for action in MLFLOW_ACTIONS[method]}
    document = json.loads((IAM / EXECUTION_POLICY).read_text(encoding="utf-8"))
    statement = next(s for s in document["Statement"] if s.get("Sid") == "TrackExperimentsInMlflow")
    assert needed <= set(statement["Action"]), needed - set(statement["Action"])
    assert ":mlflow-tracking-server/" in statement["Resource"]

