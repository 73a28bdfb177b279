"""``python -m pipeline check`` and the AWS constraints of issue 14 (defects 2, 3, 4, 6, 7), each pinned here.

Definitions are built offline (a few builds per module, shared through fixtures); the rules that need no
definition run on the config alone. The S3 test talks to a loopback server through a real botocore client.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
import pytest
from test_definition import steps_by_name  # tests/unit is on sys.path: pytest imports its modules by name

from pipeline import aws
from pipeline.build import definition_json
from pipeline.check import (
    MAX_DEFINITION_CHARS,
    check,
    config_findings,
    parameter_findings,
    request_shape_findings,
    volume_key_findings,
)
from pipeline.cli import main
from pipeline.config import load_config
from pipeline.errors import UserError
from pipeline.instances import has_instance_store, is_gpu, valid_instance_types, volume_kms_key
from steps.tune import hyperband_resources

KEY = "arn:aws:kms:us-east-1:111122223333:key/0a1b2c3d-1111-2222-3333-444455556666"


def built(*overrides: str) -> dict:
    return steps_by_name(json.loads(definition_json(load_config(overrides=list(overrides)))))


def rules(findings) -> set[str]:
    return {finding.rule for finding in findings}


@pytest.fixture(scope="module")
def default_steps():
    """The default config's definition, steps by name."""
    return built()


@pytest.fixture(scope="module")
def kms_default_types():
    """A KMS key with the default instance types: g4dn training (instance store), m5 processing and endpoint."""
    return built(f"security.kms_key_id={KEY}")


@pytest.fixture(scope="module")
def kms_other_types():
    """A KMS key with m5 training (EBS), r5d processing (instance store), g4dn endpoints, and two instances."""
    return built(f"security.kms_key_id={KEY}", "instances.training_type=ml.m5.xlarge",
                 "instances.processing_type=ml.r5d.xlarge", "deploy.stages.staging.instance_type=ml.g4dn.xlarge",
                 "deploy.stages.production.instance_type=ml.g4dn.xlarge", "instances.training_count=2")  # fmt: skip


# -- defect 2: no volume KMS key on instance-store types ------------------------------------------------------------


def test_instance_store_table():
    for instance_type in ("ml.g4dn.xlarge", "ml.g5.2xlarge", "ml.g6e.xlarge", "ml.p3dn.24xlarge", "ml.p4d.24xlarge",
                          "ml.p5.48xlarge", "ml.p6-b200.48xlarge", "ml.trn1.32xlarge", "ml.c5d.large", "ml.r5d.xlarge",
                          "ml.m6gd.large", "ml.dl1.24xlarge"):  # fmt: skip
        assert has_instance_store(instance_type), instance_type
    for instance_type in ("ml.m5.xlarge", "ml.c5.xlarge", "ml.p3.2xlarge", "ml.p2.xlarge", "ml.inf2.xlarge",
                          "ml.c5n.xlarge", "ml.t3.medium", "ml.c7i-flex.large", "ml.m6i.large"):  # fmt: skip
        assert not has_instance_store(instance_type), instance_type
    assert volume_kms_key("ml.g4dn.xlarge", KEY) is None and volume_kms_key("ml.m5.xlarge", KEY) == KEY
    assert volume_kms_key("ml.m5.xlarge", None) is None


def test_kms_key_left_out_for_the_default_g4dn_training(kms_default_types):
    tune = kms_default_types["tune"]["Arguments"]["TrainingJobDefinition"]
    train = kms_default_types["train"]["Arguments"]
    assert "VolumeKmsKeyId" not in tune["HyperParameterTuningResourceConfig"]
    assert "VolumeKmsKeyId" not in train["ResourceConfig"]
    # the output (S3) is still encrypted with the key, and EBS-backed processing and endpoint keep it
    assert tune["OutputDataConfig"]["KmsKeyId"] == KEY and train["OutputDataConfig"]["KmsKeyId"] == KEY
    assert kms_default_types["split"]["Arguments"]["ProcessingResources"]["ClusterConfig"]["VolumeKmsKeyId"] == KEY
    assert kms_default_types["deploy"]["Arguments"]["kms_key_id"] == KEY


def test_kms_key_follows_each_instance_type(kms_other_types):
    assert kms_other_types["train"]["Arguments"]["ResourceConfig"]["VolumeKmsKeyId"] == KEY
    tune = kms_other_types["tune"]["Arguments"]["TrainingJobDefinition"]
    assert tune["HyperParameterTuningResourceConfig"]["VolumeKmsKeyId"] == KEY
    for step in ("split", "debug", "evaluate"):
        assert "VolumeKmsKeyId" not in kms_other_types[step]["Arguments"]["ProcessingResources"]["ClusterConfig"]
    assert "kms_key_id" not in kms_other_types["deploy"]["Arguments"]


def test_check_finds_a_volume_key_on_an_instance_store_type(kms_other_types):
    definition = {"Parameters": [{"Name": "TrainingInstanceType", "DefaultValue": "ml.g5.xlarge"}],
                  "Steps": [kms_other_types["train"]]}  # fmt: skip
    assert rules(volume_key_findings(definition)) == {"kms-instance-store"}
    definition["Parameters"][0]["DefaultValue"] = "ml.m5.xlarge"
    assert volume_key_findings(definition) == []


def test_start_refuses_an_instance_type_override_that_crosses_the_kms_rule(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # a call would fail differently
    config = load_config(overrides=[f"security.kms_key_id={KEY}", "instances.training_type=ml.m5.xlarge"])
    with pytest.raises(UserError, match=r"--param TrainingInstanceType: ml.g5.xlarge has instance store.*upsert"):
        aws.start(config, {"TrainingInstanceType": "ml.g5.xlarge"})
    assert parameter_findings(config, {"TrainingInstanceType": "ml.c5.xlarge"}) == []
    plain = load_config()  # no key: any training type goes
    assert parameter_findings(plain, {"TrainingInstanceType": "ml.g5.xlarge", "TrainingInstanceCount": "2"}) == []
    assert rules(parameter_findings(plain, {"TrainingInstanceType": "ml.g5.huge"})) == {"instance-type"}
    assert rules(parameter_findings(plain, {"TrainingInstanceCount": "0"})) == {"instance-count"}


# -- defect 3: Hyperband's resources ------------------------------------------------------------------------------


def test_hyperband_gets_min_and_max_resource_from_the_epochs_range():
    tuning = built("tuning.strategy=Hyperband", "tuning.early_stopping=Off")["tune"]["Arguments"]
    job = tuning["HyperParameterTuningJobConfig"]
    epochs = load_config().tuning.ranges["epochs"]
    assert job["StrategyConfig"] == {"HyperbandStrategyConfig": {"MinResource": epochs.min, "MaxResource": epochs.max}}
    assert job["TrainingJobEarlyStoppingType"] == "Off"
    assert request_shape_findings({"Steps": [{"Name": "tune", "Type": "Tuning", "Arguments": tuning}]}) == []


def test_hyperband_resources_from_categorical_or_fixed_epochs_and_refused_without():
    categorical = load_config(overrides=["tuning.ranges.epochs={type: categorical, values: [3, 9, 6]}"])
    assert hyperband_resources(categorical) == (3, 9)
    fixed = load_config(overrides=["tuning.ranges.epochs={type: categorical, values: [4]}"])
    assert hyperband_resources(fixed) == (4, 4)
    without = load_config(overrides=["tuning.strategy=Hyperband", "tuning.early_stopping=Off"])
    data = without.model_dump()
    del data["tuning"]["ranges"]["epochs"]
    no_epochs = type(without).model_validate(data)
    assert hyperband_resources(no_epochs) is None
    found = config_findings(no_epochs)
    assert rules(found) == {"hyperband-resource"} and "training.hyperparameters.epochs" in str(found[0])
    data["training"]["hyperparameters"]["epochs"] = 12
    assert hyperband_resources(type(without).model_validate(data)) == (1, 12)
    data["training"]["hyperparameters"]["epochs"] = 30000
    assert rules(config_findings(type(without).model_validate(data))) == {"hyperband-resource"}


def test_check_wants_early_stopping_off_with_hyperband():
    found = config_findings(load_config(overrides=["tuning.strategy=Hyperband"]))
    assert rules(found) == {"hyperband-early-stopping"} and "tuning.early_stopping: Off" in str(found[0])


# -- defect 4: torch_distributed whatever the count ------------------------------------------------------------


def test_training_runs_torch_distributed_for_one_and_two_instances(default_steps, kms_other_types):
    one = default_steps
    for steps, count in ((one, 1), (kms_other_types, 2)):
        train = steps["train"]["Arguments"]
        assert train["HyperParameters"]["sagemaker_torch_distributed_enabled"] == "true", count
        assert train["ResourceConfig"]["InstanceCount"] == {"Get": "Parameters.TrainingInstanceCount"}
        tune_hp = steps["tune"]["Arguments"]["TrainingJobDefinition"]["StaticHyperParameters"]
        assert "sagemaker_torch_distributed_enabled" not in tune_hp  # one instance per trial, one process
    assert load_config(overrides=["instances.training_count=2"]).instances.training_count == 2


# -- defect 6: HeadObject answers 403 without s3:ListBucket ---------------------------------------------------


class _S3(BaseHTTPRequestHandler):
    """HEAD -> 403 with no body (S3 to a caller without s3:ListBucket, for a missing key); PUT -> 200."""

    puts: list[str] = []

    def do_HEAD(self):  # noqa: N802 - http.server's naming
        self.send_response(403)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_PUT(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).puts.append(self.path)
        self.send_response(200)
        self.send_header("ETag", '"0"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_upload_goes_ahead_when_head_object_answers_403():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _S3)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        s3 = boto3.client("s3", region_name="us-east-1", endpoint_url=f"http://127.0.0.1:{server.server_address[1]}",
                          aws_access_key_id="testing", aws_secret_access_key="testing")  # fmt: skip
        uploaded, present = aws._upload(s3, {"s3://bucket/pipelines/code/abc/sourcedir.tar.gz": b"x"}, None)
    finally:
        server.shutdown()
    assert uploaded == ["s3://bucket/pipelines/code/abc/sourcedir.tar.gz"] and present == []
    assert _S3.puts == ["/bucket/pipelines/code/abc/sourcedir.tar.gz"]


# -- defect 7: GPU inference image, schedule name, ECR account ------------------------------------------------


def test_gpu_instance_types_are_registered_with_the_gpu_image(default_steps, kms_other_types):
    default = default_steps["register-RegisterModel"]["Arguments"]
    assert default["InferenceSpecification"]["SupportedRealtimeInferenceInstanceTypes"] == ["ml.m5.large"]
    assert "-cpu-" in default["InferenceSpecification"]["Containers"][0]["Image"]
    (gpu,) = default["AdditionalInferenceSpecifications"]
    assert gpu["SupportedRealtimeInferenceInstanceTypes"] == ["ml.g4dn.xlarge"]
    assert "-gpu-" in gpu["Containers"][0]["Image"]
    assert gpu["Containers"][0]["ModelDataUrl"] == default["InferenceSpecification"]["Containers"][0]["ModelDataUrl"]
    # an endpoint on a GPU type: the primary specification (what CreateModel from the package uses) is the GPU one
    on_gpu = kms_other_types["register-RegisterModel"]["Arguments"]
    assert "-gpu-" in on_gpu["InferenceSpecification"]["Containers"][0]["Image"]
    (cpu,) = on_gpu["AdditionalInferenceSpecifications"]
    assert "-cpu-" in cpu["Containers"][0]["Image"] and cpu["SupportedTransformInstanceTypes"] == ["ml.m5.large"]
    assert all(is_gpu(t) for t in on_gpu["InferenceSpecification"]["SupportedRealtimeInferenceInstanceTypes"])


def test_schedule_name_fits_eventbridge_for_long_pipeline_names():
    short = load_config()
    assert aws.schedule_name(short) == "image-classification-schedule"
    names = [aws.schedule_name(load_config(overrides=[f"pipeline_name={'p' * 55}{tail}"])) for tail in ("a", "b")]
    assert all(len(name) <= aws.SCHEDULE_NAME_MAX and name.endswith("-schedule") for name in names)
    assert names[0] != names[1]  # a hash of the whole name keeps them apart


def test_iam_policy_ecr_account_is_the_images_account():
    config = load_config(overrides=["region=ap-east-1"])
    policy = json.loads(aws.iam_documents(config)["pipeline-execution-role.json"])
    (ecr,) = [s for s in policy["Statement"] if s["Sid"] == "PullTheAwsPyTorchImages"]
    accounts = {arn.split(":")[4] for arn in ecr["Resource"]}
    definition = definition_json(config)
    images = {json.loads(definition)["Steps"][2]["Arguments"]["AlgorithmSpecification"]["TrainingImage"]}
    assert accounts == {image.split(".")[0] for image in images} == {"871362719292"}
    assert "ap-east-1" in ecr["Resource"][0] and "ACCOUNT_ID" not in json.dumps(policy)


# -- check: the default passes; each rule has a config that breaks it ------------------------------------------


def test_check_passes_the_default_config_and_its_local_block(capsys):
    assert check(load_config()) == [] and check(load_config(local=True)) == []
    assert main(["check"]) == 0
    assert "no problem found" in capsys.readouterr().out


@pytest.fixture(scope="module")
def shape_breaking():
    return load_config(overrides=[f"tags.note={'x' * 300}", "instances.max_runtime_s=1000000"])


def test_check_reports_request_shape_violations(shape_breaking, capsys):
    findings = check(shape_breaking)
    lines = [str(f) for f in findings if f.rule == "api-shape"]
    assert any(".Value" in line and "Tags[" in line and "above the maximum 256" in line for line in lines)
    assert any("step split.StoppingCondition.MaxRuntimeInSeconds" in line and "777600" in line for line in lines)
    assert all("Fix: " in line for line in lines)
    assert main(["check", "--set", f"tags.note={'x' * 300}", "--set", "instances.max_runtime_s=1000000"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert len(out) == len(findings) and all(line.endswith("]") for line in out)


def test_upsert_runs_check_before_any_aws_call(shape_breaking, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens: a call would fail otherwise
    with pytest.raises(UserError, match="nothing was sent to AWS") as error:
        aws.upsert(shape_breaking)
    assert "MaxRuntimeInSeconds" in str(error.value)


@pytest.mark.parametrize(
    ("overrides", "rule", "where"),
    [
        (["instances.training_type=ml.m5.huge"], "instance-type", "instances.training_type"),
        (["instances.processing_type=ml.p4d.24xlarge"], "instance-type", "instances.processing_type"),
        (["registry.transform_instance_types=[ml.m5.large, ml.t2.medium]"], "instance-type",
         "registry.transform_instance_types"),
        (["tuning.ranges.momentum.scaling=ReverseLogarithmic", "tuning.ranges.momentum.max=1.5"], "range-scaling",
         "tuning.ranges.momentum"),
        (["tuning.ranges.epochs.scaling=ReverseLogarithmic"], "range-scaling", "tuning.ranges.epochs"),
        (["training.spot=true", "training.max_wait_s=3600"], "spot-wait", "training.max_wait_s"),
        ([f"deploy.lambda_function_name={'f' * 65}"], "lambda-name", "deploy.lambda_function_name"),
        (["deploy.stages.staging.instance_type=ml.c5.xlarge"], "deploy-type-registered",
         "deploy.stages.staging.instance_type"),
        ([f"deploy.stages.production.endpoint_name={'e' * 49}"], "deploy-names",
         "deploy.stages.production.endpoint_name"),
    ],
)  # fmt: skip
def test_each_config_rule_names_the_key_and_the_fix(overrides, rule, where):
    findings = config_findings(load_config(overrides=overrides))
    assert rules(findings) == {rule}, [str(f) for f in findings]
    assert findings[0].where == where and findings[0].fix


def test_check_reports_a_definition_over_the_size_limit():
    found = config_findings(load_config(), "x" * (MAX_DEFINITION_CHARS + 1))
    assert rules(found) == {"definition-size"}


def test_instance_types_come_from_the_api_enums():
    assert "ml.g4dn.xlarge" in valid_instance_types("training")
    assert "ml.p4d.24xlarge" not in valid_instance_types("processing")  # processing takes no p4d
    assert "ml.c5d.large" in valid_instance_types("endpoint") and "ml.c5d.large" not in valid_instance_types("training")
