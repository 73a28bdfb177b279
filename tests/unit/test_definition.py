"""The pipeline definition, parsed with json.loads: steps, references, rules, caching, parameters, determinism.

Builds run with networking made impossible (a socket guard) and no AWS credentials in the environment.
"""

from __future__ import annotations

import json
import os
import re
import socket
import tarfile
from io import BytesIO
from pathlib import Path

import pytest

from pipeline import package
from pipeline.build import build, definition_json
from pipeline.config import load_config
from pipeline.local.executor import cache_key_attributes

EXPECTED_STEPS = [
    ("split", "Processing"),
    ("tune", "Tuning"),
    ("train", "Training"),
    ("debug", "Processing"),
    ("evaluate", "Processing"),
    ("quality_gate", "Condition"),
]
DEBUGGER_RULES = ["VanishingGradient", "Overfit", "Overtraining", "PoorWeightInitialization", "LossNotDecreasing"]


class NetworkAttempt(AssertionError):
    pass


@pytest.fixture
def no_network(monkeypatch):
    """No credentials, no config files, and any socket connection raises (and is recorded)."""
    attempts: list = []

    def refuse(self, address, *args, **kwargs):
        attempts.append(address)
        raise NetworkAttempt(f"network call to {address} during an offline build")

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return attempts


@pytest.fixture(scope="module")
def default_build():
    return build(load_config())


@pytest.fixture(scope="module")
def definition(default_build):
    return json.loads(default_build.definition)


def steps_by_name(definition: dict) -> dict:
    steps = {}
    for step in definition["Steps"]:
        steps[step["Name"]] = step
        for branch in ("IfSteps", "ElseSteps"):
            for inner in step.get("Arguments", {}).get(branch, []):
                steps[inner["Name"]] = inner
    return steps


def gets(node) -> list[str]:
    """Every ``{"Get": ...}`` reference inside ``node``."""
    if isinstance(node, dict):
        found = [node["Get"]] if "Get" in node and isinstance(node["Get"], str) else []
        return found + [ref for value in node.values() for ref in gets(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in gets(value)]
    return []


def test_build_is_offline_and_byte_identical(no_network):
    config = load_config()
    first = definition_json(config)
    second = definition_json(load_config())
    assert first == second
    assert no_network == []
    # RegisterModel (never cached) names the execution in its CustomerMetadataProperties, which leads to its
    # MLflow run (docs/tracking.md); no other step carries the execution ARN or the start time.
    parsed = json.loads(first)
    register = next(s for s in parsed["Steps"][-1]["Arguments"]["IfSteps"] if s["Type"] == "RegisterModel")
    metadata = register["Arguments"].pop("CustomerMetadataProperties")
    assert metadata["pipeline_execution_arn"] == {"Get": "Execution.PipelineExecutionArn"}
    assert "CacheConfig" not in register
    # the execution id is the only other execution variable (in output locations; never the start time)
    assert set(re.findall(r'"Execution\.\w+"', json.dumps(parsed))) == {'"Execution.PipelineExecutionId"'}


def test_steps_names_types_and_branches(definition):
    assert [(s["Name"], s["Type"]) for s in definition["Steps"]] == EXPECTED_STEPS
    gate = steps_by_name(definition)["quality_gate"]["Arguments"]
    assert [(s["Name"], s["Type"]) for s in gate["IfSteps"]] == [
        ("register-RegisterModel", "RegisterModel"),
        ("deploy", "Lambda"),
        ("endpoint_outcome", "Callback"),
    ]
    assert [(s["Name"], s["Type"]) for s in gate["ElseSteps"]] == [("quality_gate_failed", "Fail")]


def test_parameters_have_typed_defaults(definition):
    params = {p["Name"]: (p["Type"], p["DefaultValue"]) for p in definition["Parameters"]}
    config = load_config()
    assert params == {
        "InputDataUri": ("String", config.input_data_uri),
        "ProcessingInstanceType": ("String", "ml.m5.xlarge"),
        "TrainingInstanceType": ("String", "ml.g4dn.xlarge"),
        "TrainingInstanceCount": ("Integer", 1),
        "AccuracyThreshold": ("Float", config.evaluation.accuracy_threshold),
        "ModelApprovalStatus": ("String", "PendingManualApproval"),
    }


def test_caching_on_cacheable_steps(definition):
    steps = steps_by_name(definition)
    for name in ("split", "tune", "train", "debug", "evaluate"):
        assert steps[name]["CacheConfig"]["Enabled"] is True, name
    assert "CacheConfig" not in steps["quality_gate"]


EXECUTION_ID = {"Get": "Execution.PipelineExecutionId"}


def test_outputs_go_under_the_execution_id_and_no_cache_key_holds_it(definition):
    """Each execution writes under its own prefix (S3 keeps earlier objects), while SageMaker's cache key
    attributes (output locations are not among them) stay free of the execution id, so caching still works."""
    steps = steps_by_name(definition)
    locations = {
        name: [o["S3Output"]["S3Uri"] for o in steps[name]["Arguments"]["ProcessingOutputConfig"]["Outputs"]]
        for name in ("split", "debug", "evaluate")
    }
    locations["train"] = [steps["train"]["Arguments"]["OutputDataConfig"]["S3OutputPath"]]
    locations["tune"] = [steps["tune"]["Arguments"]["TrainingJobDefinition"]["OutputDataConfig"]["S3OutputPath"]]
    for name, uris in locations.items():
        for uri in uris:
            values = uri["Std:Join"]["Values"]
            assert values[1] == EXECUTION_ID and values[2] == name, (name, uri)
    for name in ("split", "tune", "train", "debug", "evaluate"):
        key = cache_key_attributes(steps[name]["Type"], steps[name]["Arguments"])
        assert key and "Execution." not in json.dumps(key), name
    # the checkpoint URI is in the training key: fixed, train.py separates jobs below it by TRAINING_JOB_NAME
    assert steps["train"]["Arguments"]["CheckpointConfig"]["S3Uri"].endswith("/image-classification/train/checkpoints")


def test_downstream_inputs_come_from_upstream_properties(definition):
    """Never a rebuilt URI: a cache hit hands on the source execution's locations, so later steps hit too."""
    steps = steps_by_name(definition)
    evaluate = {i["InputName"]: gets(i) for i in steps["evaluate"]["Arguments"]["ProcessingInputs"]}
    assert evaluate["model"] == ["Steps.train.ModelArtifacts.S3ModelArtifacts"]
    assert evaluate["test"] == ["Steps.split.ProcessingOutputConfig.Outputs['test'].S3Output.S3Uri"]
    debug = {i["InputName"]: gets(i) for i in steps["debug"]["Arguments"]["ProcessingInputs"]}
    assert debug["training-output"] == ["Steps.train.OutputDataConfig.S3OutputPath", "Steps.train.TrainingJobName"]
    tune_channels = [gets(c) for c in steps["tune"]["Arguments"]["TrainingJobDefinition"]["InputDataConfig"]]
    assert tune_channels == [[f"Steps.split.ProcessingOutputConfig.Outputs['{n}'].S3Output.S3Uri"]
                             for n in ("train", "validation")]
    metrics = steps["register-RegisterModel"]["Arguments"]["ModelMetrics"]["ModelQuality"]["Statistics"]
    assert gets(metrics) == ["Steps.evaluate.ProcessingOutputConfig.Outputs['evaluation'].S3Output.S3Uri"]


def test_train_reads_tuned_hyperparameters_and_split_channels(definition):
    train = steps_by_name(definition)["train"]["Arguments"]
    hp = train["HyperParameters"]
    for key in ("lr", "batch-size", "epochs", "momentum", "weight-decay"):
        assert gets(hp[key]) == [f"Steps.tune.BestTrainingJob.TunedHyperParameters['{key}']"]
    assert hp["sagemaker_program"] == '"train.py"'
    assert hp["model"] == '"resnet50"' and hp["weights"] == '"IMAGENET1K_V2"'
    channels = {c["ChannelName"]: gets(c) for c in train["InputDataConfig"]}
    assert channels == {
        "train": ["Steps.split.ProcessingOutputConfig.Outputs['train'].S3Output.S3Uri"],
        "validation": ["Steps.split.ProcessingOutputConfig.Outputs['validation'].S3Output.S3Uri"],
    }
    assert "CheckpointConfig" in train
    assert "DebugHookConfig" not in train and "DebugRuleConfigurations" not in train
    assert train["ProfilerConfig"]["DisableProfiler"] is True
    assert gets(train["ResourceConfig"]["InstanceCount"]) == ["Parameters.TrainingInstanceCount"]


def test_tuning_config(definition):
    tune = steps_by_name(definition)["tune"]["Arguments"]
    config = tune["HyperParameterTuningJobConfig"]
    assert config["HyperParameterTuningJobObjective"] == {"MetricName": "validation:accuracy", "Type": "Maximize"}
    assert config["Strategy"] == "Bayesian"
    assert config["TrainingJobEarlyStoppingType"] == "Auto"
    assert config["ResourceLimits"] == {"MaxNumberOfTrainingJobs": 12, "MaxParallelTrainingJobs": 3}
    lr = next(r for r in config["ParameterRanges"]["ContinuousParameterRanges"] if r["Name"] == "lr")
    assert lr["ScalingType"] == "Logarithmic"
    assert [r["Name"] for r in config["ParameterRanges"]["CategoricalParameterRanges"]] == ["batch-size"]
    assert [r["Name"] for r in config["ParameterRanges"]["IntegerParameterRanges"]] == ["epochs"]
    job = tune["TrainingJobDefinition"]
    names = [m["Name"] for m in job["AlgorithmSpecification"]["MetricDefinitions"]]
    assert "validation:accuracy" in names
    assert "sagemaker_job_name" not in job["StaticHyperParameters"]


def test_debug_step_reads_train_output_and_carries_rules(definition):
    debug = steps_by_name(definition)["debug"]
    args = debug["Arguments"]["AppSpecification"]["ContainerArguments"]
    assert args[args.index("--blocking-rules") + 1] == "VanishingGradient,PoorWeightInitialization"
    flags = " ".join(a for a in args if a.startswith("--"))
    for rule in ("vanishing-gradient", "overfit", "overtraining", "poor-weight-initialization",
                 "loss-not-decreasing", "low-gpu-utilization"):  # fmt: skip
        assert f"--{rule}-" in flags, rule
    source = next(i for i in debug["Arguments"]["ProcessingInputs"] if i["InputName"] == "training-output")
    join = source["S3Input"]["S3Uri"]["Std:Join"]
    assert join["Values"][:2] == [
        {"Get": "Steps.train.OutputDataConfig.S3OutputPath"},
        {"Get": "Steps.train.TrainingJobName"},
    ]
    assert join["Values"][2:] == ["output", "output.tar.gz"]
    assert debug["PropertyFiles"] == [
        {"FilePath": "debug.json", "OutputName": "debug", "PropertyFileName": "DebugReport"}
    ]


def test_gate_reads_property_files_and_fail_message(definition):
    steps = steps_by_name(definition)
    conditions = steps["quality_gate"]["Arguments"]["Conditions"]
    assert [c["Type"] for c in conditions] == ["GreaterThanOrEqualTo", "Equals"]
    accuracy = conditions[0]["LeftValue"]["Std:JsonGet"]
    assert accuracy["Path"] == "multiclass_classification_metrics.accuracy.value"
    assert accuracy["PropertyFile"] == {"Get": "Steps.evaluate.PropertyFiles.EvaluationReport"}
    assert conditions[0]["RightValue"] == {"Get": "Parameters.AccuracyThreshold"}
    blocking = conditions[1]["LeftValue"]["Std:JsonGet"]
    assert blocking["PropertyFile"] == {"Get": "Steps.debug.PropertyFiles.DebugReport"}
    assert blocking["Path"] == "summary.blocking_issues_found"
    assert conditions[1]["RightValue"] == 0
    message = steps["quality_gate_failed"]["Arguments"]["ErrorMessage"]["Std:Join"]["Values"]
    refs = [v for v in message if isinstance(v, dict)]
    assert {"Get": "Parameters.AccuracyThreshold"} in refs
    assert sorted(v["Std:JsonGet"]["Path"] for v in refs if "Std:JsonGet" in v) == [
        "multiclass_classification_metrics.accuracy.value",
        "summary.blocking_issues_found",
        "summary.blocking_reason",  # which blocking rule found issues or could not judge, and why
    ]


def test_register_and_deploy(definition):
    steps = steps_by_name(definition)
    register = steps["register-RegisterModel"]["Arguments"]
    container = register["InferenceSpecification"]["Containers"][0]
    assert "pytorch-inference" in container["Image"]
    assert container["Environment"]["SAGEMAKER_PROGRAM"] == "inference.py"
    assert gets(container["ModelDataUrl"]) == ["Steps.train.ModelArtifacts.S3ModelArtifacts"]
    assert gets(register["ModelApprovalStatus"]) == ["Parameters.ModelApprovalStatus"]
    assert gets(register["ModelMetrics"]) == [
        "Steps.evaluate.ProcessingOutputConfig.Outputs['evaluation'].S3Output.S3Uri"
    ]
    assert not any("RepackModel" in name for name in steps)
    deploy = steps["deploy"]
    assert deploy["FunctionArn"] == "arn:aws:lambda:us-east-1:111122223333:function:image-classification-deploy"
    assert gets(deploy["Arguments"]["model_package_arn"]) == ["Steps.register-RegisterModel.ModelPackageArn"]
    # The pipeline deploys to staging only; production is reached by `promote` (docs/aws.md).
    assert deploy["Arguments"]["endpoint_name"] == "image-classification-staging"
    assert deploy["Arguments"]["data_capture_uri"].endswith("/image-classification/data-capture")
    # The Lambda returns at once; the callback step ends with the endpoint's real outcome (steps/deploy.py).
    assert deploy["Arguments"]["wait_for_outcome"] == "false"
    outcome = steps["endpoint_outcome"]
    assert outcome["SqsQueueUrl"] == (
        "https://sqs.us-east-1.amazonaws.com/111122223333/image-classification-deploy-outcomes")
    assert {name: gets(value) for name, value in outcome["Arguments"].items()} == {
        name: [f"Steps.deploy.OutputParameters['{name}']"]
        for name in ("endpoint_name", "endpoint_config_name", "status", "reason")}
    assert [o["OutputName"] for o in outcome["OutputParameters"]] == ["status", "reason"]


def test_code_bundle_is_in_definition_and_uploads(default_build, definition):
    steps = steps_by_name(definition)
    code_uri = json.loads(steps["train"]["Arguments"]["HyperParameters"]["sagemaker_submit_directory"])
    assert code_uri in default_build.uploads
    digest = code_uri.rsplit("/", 2)[-2]
    assert package.hashlib.sha256(default_build.uploads[code_uri]).hexdigest().startswith(digest)
    split_inputs = {i["InputName"]: i["S3Input"]["S3Uri"] for i in steps["split"]["Arguments"]["ProcessingInputs"]}
    assert split_inputs["code"] == code_uri
    assert split_inputs["entrypoint"] in default_build.uploads  # runproc.sh kept for upsert, not uploaded
    assert b"split.py" in default_build.uploads[split_inputs["entrypoint"]]
    with tarfile.open(fileobj=BytesIO(default_build.uploads[code_uri])) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert "train.py" in names and "imgclf/metrics.py" in names
    assert names == sorted(names) and not any("__pycache__" in n for n in names)
    assert {(m.mtime, m.uid, m.gid) for m in members} == {(0, 0, 0)}


@pytest.fixture(scope="module")
def managed_steps():
    """Steps by name of the definition with SageMaker's managed Debugger (and one rule parameter changed)."""
    config = load_config(overrides=["debugger.managed=true", "debugger.rules.Overfit.patience=3"])
    return steps_by_name(json.loads(definition_json(config)))


def test_managed_debugger_adds_rules_with_parameters(managed_steps):
    train = managed_steps["train"]["Arguments"]
    rules = {r["RuleConfigurationName"]: r["RuleParameters"] for r in train["DebugRuleConfigurations"]}
    assert sorted(rules) == sorted(DEBUGGER_RULES)
    assert rules["Overfit"]["patience"] == "3"
    assert rules["VanishingGradient"]["threshold"] == "1e-07"
    assert rules["VanishingGradient"]["rule_to_invoke"] == "VanishingGradient"
    profiler = {r["RuleConfigurationName"] for r in train["ProfilerRuleConfigurations"]}
    assert profiler == {"ProfilerReport", "LowGPUUtilization"}
    assert train["DebugHookConfig"]["S3OutputPath"].endswith("/train/debugger")
    assert "DisableProfiler" not in train["ProfilerConfig"] or train["ProfilerConfig"]["DisableProfiler"] is False


def test_managed_debugger_debug_step_reads_the_hooks_s3_output(definition, managed_steps):
    """A managed hook writes to <DebugHookConfig.S3OutputPath>/<job>/debug-output, not into output.tar.gz."""
    unmanaged = steps_by_name(definition)["debug"]["Arguments"]
    assert [i["InputName"] for i in unmanaged["ProcessingInputs"]] == ["training-output", "code", "entrypoint"]
    assert "--tensors" not in unmanaged["AppSpecification"]["ContainerArguments"]
    debug = managed_steps["debug"]["Arguments"]
    tensors = next(i for i in debug["ProcessingInputs"] if i["InputName"] == "tensors")
    assert tensors["S3Input"]["LocalPath"] == "/opt/ml/processing/tensors"
    assert tensors["S3Input"]["S3Uri"]["Std:Join"] == {"On": "/", "Values": [
        {"Get": "Steps.train.DebugHookConfig.S3OutputPath"}, {"Get": "Steps.train.TrainingJobName"}, "debug-output"]}
    args = debug["AppSpecification"]["ContainerArguments"]
    assert args[args.index("--tensors") + 1] == "/opt/ml/processing/tensors"


def test_multi_instance_and_no_deploy():
    config = load_config(overrides=["instances.training_count=2", "deploy.enabled=false", "training.spot=true"])
    steps = steps_by_name(json.loads(definition_json(config)))
    train = steps["train"]["Arguments"]
    assert train["HyperParameters"]["sagemaker_torch_distributed_enabled"] == "true"
    tune_hp = steps["tune"]["Arguments"]["TrainingJobDefinition"]["StaticHyperParameters"]
    assert "sagemaker_torch_distributed_enabled" not in tune_hp
    assert train["EnableManagedSpotTraining"] is True
    assert train["StoppingCondition"]["MaxWaitTimeInSeconds"] == 172800
    assert "deploy" not in steps
    tune_job = steps["tune"]["Arguments"]["TrainingJobDefinition"]
    assert tune_job["HyperParameterTuningResourceConfig"]["InstanceCount"] == 1


def test_code_change_changes_uri_only_for_code(tmp_path):
    (tmp_path / "a.py").write_text("print(1)\n")
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"junk")
    first = package.bundle("s3://b/p/code", tmp_path)
    assert package.bundle("s3://b/p/code", tmp_path) == first
    (tmp_path / "a.py").write_text("print(2)\n")
    second = package.bundle("s3://b/p/code", tmp_path)
    assert second.s3_uri != first.s3_uri and second.s3_uri.endswith("/sourcedir.tar.gz")


def test_iam_policies_list_actions_without_wildcards():
    folder = Path(__file__).resolve().parents[2] / "docs" / "iam"
    policies = sorted(folder.glob("*.json"))
    assert {p.name for p in policies} >= {"pipeline-execution-role.json", "scheduler-role.json",
                                          "deploy-lambda-role.json"}  # fmt: skip
    for path in policies:
        for statement in json.loads(path.read_text())["Statement"]:
            actions = [statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"]
            assert all("*" not in action for action in actions), path.name


def test_cli_definition_prints_only_json_without_credentials(tmp_path, definition):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_CONFIG_FILE=str(tmp_path / "none"), AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
               AWS_EC2_METADATA_DISABLED="true", HOME=str(tmp_path))  # fmt: skip
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "definition"], cwd=root, env=env, capture_output=True, text=True, check=True
    )
    assert json.loads(result.stdout) == definition


#: The SageMaker API request each step type's Arguments are (what SageMaker Pipelines sends for the step).
API_OPERATIONS = {"Processing": "CreateProcessingJob", "Training": "CreateTrainingJob",
                  "Tuning": "CreateHyperParameterTuningJob", "RegisterModel": "CreateModelPackage"}  # fmt: skip
JOB_NAME_KEYS = {"Processing": "ProcessingJobName", "Training": "TrainingJobName",
                 "Tuning": "HyperParameterTuningJobName"}  # fmt: skip


def _placeholders(node, shape):
    """``node`` with each pipeline expression (Get, Std:Join, Std:JsonGet) replaced by a value of the shape's type."""
    if isinstance(node, dict) and ({"Get", "Std:Join", "Std:JsonGet"} & node.keys()):
        return {"integer": 1, "long": 1, "float": 1.0, "double": 1.0, "boolean": True}.get(shape.type_name, "s3://b/k")
    if shape.type_name == "structure" and isinstance(node, dict):
        return {k: _placeholders(v, shape.members[k]) if k in shape.members else v for k, v in node.items()}
    if shape.type_name == "list" and isinstance(node, list):
        return [_placeholders(v, shape.member) for v in node]
    if shape.type_name == "map" and isinstance(node, dict):
        return {k: _placeholders(v, shape.value) for k, v in node.items()}
    return node


def test_job_requests_match_the_sagemaker_api_shapes(definition):
    """botocore's own validator (types, required members, unknown members) on each step's request."""
    import botocore.session
    from botocore.validate import ParamValidator

    model = botocore.session.get_session().get_service_model("sagemaker")
    checked = []
    for name, step in steps_by_name(definition).items():
        if step["Type"] not in API_OPERATIONS:
            continue
        shape = model.operation_model(API_OPERATIONS[step["Type"]]).input_shape
        request = _placeholders(step["Arguments"], shape)
        if step["Type"] in JOB_NAME_KEYS:
            request.setdefault(JOB_NAME_KEYS[step["Type"]], "name-given-by-sagemaker")
        report = ParamValidator().validate(request, shape)
        assert not report.has_errors(), f"{name}: {report.generate_report()}"
        checked.append(name)
    assert checked == ["split", "tune", "train", "debug", "evaluate", "register-RegisterModel"]



def test_offline_session_names_the_refused_operation_and_its_caller():
    """A builder bug that reaches AWS says which operation and which line asked, not only the endpoint's URL."""
    from pipeline.session import OfflineError, OfflinePipelineSession

    session = OfflinePipelineSession(region="us-east-1", bucket="bucket")
    with pytest.raises(OfflineError) as refused:
        session.sagemaker_client.describe_pipeline(PipelineName="p")
    message = str(refused.value)
    assert "(DescribePipeline)" in message and "https://api.sagemaker.us-east-1.amazonaws.com" in message
    assert f"{__file__}:" in message and "test_offline_session_names_the_refused_operation" in message


def test_mlflow_tracking_uri_of_the_shell_does_not_reach_the_build(monkeypatch):
    """With network isolation, the SDK's ``fit`` waits on the training job when ``MLFLOW_TRACKING_URI`` is set
    (``mlflow.set_tracking_uri`` sets it too): the offline build must neither call AWS nor lose the variable."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    config = load_config(overrides=["security.enable_network_isolation=true", "training.weights=none"])
    steps = steps_by_name(json.loads(definition_json(config)))
    assert steps["train"]["Arguments"]["EnableNetworkIsolation"] is True
    assert os.environ["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:9"
