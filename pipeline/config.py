"""``pipeline.yaml`` as typed, validated pydantic models, with ``--set`` overrides and the ``local:`` block.

``load_config(path, overrides, local)`` is the only entry point. Every error is a :class:`ConfigError` (a
``UserError``) with one line per problem that names the key and the fix, e.g.::

    pipeline.yaml: tuning.max_job: unknown key; did you mean 'max_jobs'?
    pipeline.yaml: role_arn: 'my-role' is not an IAM role ARN (arn:aws:iam::<12-digit account>:role/<name>)
    pipeline.yaml: tuning.ranges.lr: min 0.1 is greater than max 0.01
"""

from __future__ import annotations

import copy
import difflib
import math
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.errors import UserError

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent.parent / "pipeline.yaml"

#: train.py hyperparameters (docs/contracts.md and ``train.py --help``), in their kebab-case spelling; a test
#: checks that train.py accepts each one.
TRAIN_HYPERPARAMETERS = (
    "model", "weights", "image-size", "epochs", "batch-size", "lr", "momentum", "weight-decay", "optimizer",
    "label-smoothing", "seed", "workers", "amp", "checkpoint-dir", "debug-save-interval", "profiler-interval",
    "augment", "lr-scheduler", "max-steps-per-epoch", "channels-last", "threads", "debugger",
)  # fmt: skip
#: Hyperparameters the tuner may search (docs/contracts.md).
TUNABLE_HYPERPARAMETERS = ("lr", "batch-size", "epochs", "momentum", "weight-decay")
#: ``--model`` values train.py accepts (imgclf/models.py MODEL_NAMES; kept here so that loading the config does not
#: import torch; a test checks that the two agree).
MODEL_NAMES = (
    "lenet", "resnet18", "resnet34", "resnet50", *(f"efficientnet_b{i}" for i in range(8)), "mobilenet_v3_small",
    "mobilenet_v3_large",
)  # fmt: skip
#: Models of imgclf/models.py that torchvision does not define, so no torchvision weights name fits them.
MODELS_WITHOUT_TORCHVISION_WEIGHTS = ("lenet",)
#: ``--weights`` values meaning random initialisation (imgclf/models.py build_model).
NO_WEIGHTS = ("none", "", "null", "random")
#: What train.py's argument parsing (train.py parse_args, imgclf/presets.py, imgclf/precision.py) accepts for each
#: fixed hyperparameter: (check, what the value must be). A value it would refuse fails the job after split and
#: tuning were paid for, so the config refuses it at load.
_HYPERPARAMETER_CHECKS = {
    "optimizer": (lambda v: v in ("sgd", "adamw"), "sgd or adamw"),
    "lr-scheduler": (lambda v: v in ("onecycle", "cosine", "constant"), "onecycle, cosine or constant"),
    "augment": (lambda v: v in ("none", "light", "standard"), "none, light or standard"),
    "amp": (lambda v: str(v).lower() in ("auto", "true", "false"), "auto, true or false"),
    "channels-last": (lambda v: str(v).lower() in ("auto", "true", "false"), "auto, true or false"),
    "debugger": (lambda v: str(v).lower() in ("true", "false", "1", "0", "yes", "no", "on", "off"), "true or false"),
    "workers": (lambda v: v == "auto" or _is_int(v, 0), "auto or an integer >= 0"),
    "epochs": (lambda v: _is_int(v, 1), "an integer >= 1"),
    "batch-size": (lambda v: _is_int(v, 1), "an integer >= 1"),
    "seed": (lambda v: _is_int(v, None), "an integer"),
    "threads": (lambda v: _is_int(v, 0), "an integer >= 0 (0: all cores)"),
    "max-steps-per-epoch": (lambda v: _is_int(v, 0), "an integer >= 0 (0: all batches)"),
    "debug-save-interval": (lambda v: _is_int(v, 1), "an integer >= 1"),
    "lr": (lambda v: _is_float(v) and float(v) > 0 and math.isfinite(float(v)), "a positive number"),
    "momentum": (lambda v: _is_float(v) and math.isfinite(float(v)), "a number"),
    "weight-decay": (lambda v: _is_float(v) and math.isfinite(float(v)), "a number"),
    "label-smoothing": (lambda v: _is_float(v) and 0 <= float(v) <= 1, "a number from 0 to 1"),
    "profiler-interval": (lambda v: _is_float(v) and float(v) > 0, "a positive number of seconds"),
}


def _is_int(value: Any, minimum: int | None) -> bool:
    if isinstance(value, bool):
        return False
    try:
        number = int(str(value))
    except ValueError:
        return False
    return minimum is None or number >= minimum


def _is_float(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    try:
        float(str(value))
    except ValueError:
        return False
    return True

# IAM role ARN: https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_identifiers.html#identifiers-arns
ROLE_ARN_PATTERN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}$")
INSTANCE_TYPE_PATTERN = re.compile(r"^ml\.[a-z0-9]+\.[a-z0-9]+$")
# Bucket naming rules: https://docs.aws.amazon.com/AmazonS3/latest/userguide/bucketnamingrules.html
BUCKET_PATTERN = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
# SageMaker resource names (pipelines, model package groups, endpoints): 1-63 (pipelines 256) alphanumerics and -.
NAME_PATTERN = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
#: ``training.weights`` values meaning random initialisation (``imgclf.models.build_model``).
NO_WEIGHTS = ("none", "", "null", "random")


class ConfigError(UserError):
    """``pipeline.yaml`` (or a ``--set`` override) is invalid; the message lists every problem and its fix."""


class _Model(BaseModel):
    # extra="forbid" turns a mistyped key into an error (reported with the closest valid key, see _explain).
    model_config = ConfigDict(extra="forbid", frozen=True)


def _role_arn(value: str | None) -> str | None:
    if value is not None and not ROLE_ARN_PATTERN.match(value):
        raise ValueError(f"{value!r} is not an IAM role ARN (arn:aws:iam::<12-digit account>:role/<name>)")
    return value


def _instance_type(value: str) -> str:
    if not INSTANCE_TYPE_PATTERN.match(value):
        raise ValueError(f"{value!r} is not a SageMaker instance type (like ml.m5.xlarge)")
    return value


def _name(value: str) -> str:
    if not NAME_PATTERN.match(value):
        raise ValueError(f"{value!r} is not a valid SageMaker name (letters, digits and '-', at most 63)")
    return value


class Framework(_Model):
    """AWS PyTorch deep learning container version (``sagemaker.image_uris.retrieve('pytorch', ...)``)."""

    version: str = "2.6"
    py_version: str = "py312"


class Instances(_Model):
    """Instance types and counts; the defaults of the matching pipeline parameters."""

    processing_type: str = "ml.m5.xlarge"
    processing_count: int = Field(1, ge=1)
    training_type: str = "ml.g4dn.xlarge"
    training_count: int = Field(1, ge=1)
    volume_size_gb: int = Field(30, ge=1, le=16384)
    max_runtime_s: int = Field(86400, ge=60, le=28 * 86400)

    _check_types = field_validator("processing_type", "training_type")(_instance_type)


class Split(_Model):
    """Fractions of the stratified split done by split.py (they must sum to 1)."""

    train_fraction: float = Field(0.8, gt=0, lt=1)
    validation_fraction: float = Field(0.1, gt=0, lt=1)
    test_fraction: float = Field(0.1, gt=0, lt=1)
    seed: int = 42

    @model_validator(mode="after")
    def _sum_to_one(self) -> Split:
        total = self.train_fraction + self.validation_fraction + self.test_fraction
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train_fraction + validation_fraction + test_fraction is {total:g}; make it 1")
        return self


class Training(_Model):
    """The training script's fixed settings; ``hyperparameters`` go to train.py unchanged.

    ``weights``: ``none``, a torchvision weights name (downloaded by the training container) or, with
    ``weights_uri`` (an S3 object or prefix given to the job as its ``weights`` channel), a ``.pth`` file name in
    that channel.
    """

    model: str = "resnet18"
    weights: str = "none"
    weights_uri: str | None = None
    image_size: int = Field(224, ge=8, le=1024)
    hyperparameters: dict[str, Union[str, int, float, bool]] = Field(default_factory=dict)  # noqa: UP007
    checkpoints: bool = True
    spot: bool = False
    max_wait_s: int = Field(172800, ge=60)

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        _check_choice(value, MODEL_NAMES, "model train.py can build")
        return value

    @model_validator(mode="after")
    def _weights_channel(self) -> Training:
        if self.weights_uri is None:
            return self
        if not self.weights_uri.startswith("s3://") or len(self.weights_uri) <= 5:
            raise ValueError(f"weights_uri {self.weights_uri!r} is not an S3 URI (s3://bucket/key.pth)")
        if not is_weights_file(self.weights) or "/" in self.weights:
            raise ValueError(f"with weights_uri, weights must be the .pth file name in that channel (e.g. "
                             f"resnet50.pth), got {self.weights!r}")
        return self

    @field_validator("hyperparameters")
    @classmethod
    def _known_hyperparameters(cls, value: dict) -> dict:
        for key, setting in value.items():
            _check_choice(key, TRAIN_HYPERPARAMETERS, "train.py hyperparameter")
            if key in ("model", "weights", "image-size"):
                raise ValueError(f"set {key!r} as training.{key.replace('-', '_')}, not in hyperparameters")
            check = _HYPERPARAMETER_CHECKS.get(key)
            if check and not check[0](setting):
                raise ValueError(f"{key}: {setting!r} would be refused by train.py; give {check[1]}")
        return value

    @model_validator(mode="after")
    def _known_weights(self) -> Training:
        # imgclf/models.py build_model: none, a state_dict file (a path, or a .pth/.pt name in the weights channel),
        # or a torchvision weights name of this model. Only the last needs torchvision, imported just then.
        weights = self.weights.strip()
        if weights.lower() in NO_WEIGHTS or "/" in weights or weights.endswith((".pth", ".pt")):
            return self
        if self.model in MODELS_WITHOUT_TORCHVISION_WEIGHTS:
            raise ValueError(f"weights {weights!r}: {self.model} has no torchvision weights (use none, or a .pth "
                             "state_dict: a path or a file in the weights channel)")
        from torchvision.models import get_model_weights

        enum = get_model_weights(self.model)
        names = [w.name for w in enum]
        try:
            enum[weights.upper()]  # imgclf/models.py's lookup: DEFAULT (an alias) included
        except KeyError:
            raise ValueError(
                f"weights {weights!r} are not torchvision weights of {self.model}{_suggest(weights.upper(), names)} "
                f"(use none, a .pth state_dict: a path or a file in the weights channel, or one of {', '.join(names)})"
            ) from None
        return self


class ContinuousRange(_Model):
    type: Literal["continuous"]
    min: float
    max: float
    scaling: Literal["Auto", "Linear", "Logarithmic", "ReverseLogarithmic"] = "Auto"

    @model_validator(mode="after")
    def _ordered(self) -> ContinuousRange:
        _check_order(self.min, self.max)
        if self.scaling == "Logarithmic" and self.min <= 0:
            raise ValueError(f"Logarithmic scaling needs min > 0 (got {self.min:g})")
        return self


class IntegerRange(_Model):
    type: Literal["integer"]
    min: int
    max: int
    scaling: Literal["Auto", "Linear", "Logarithmic", "ReverseLogarithmic"] = "Auto"

    @model_validator(mode="after")
    def _ordered(self) -> IntegerRange:
        _check_order(self.min, self.max)
        return self


class CategoricalRange(_Model):
    type: Literal["categorical"]
    values: list[Union[str, int, float]] = Field(min_length=1)  # noqa: UP007


Range = Annotated[Union[ContinuousRange, IntegerRange, CategoricalRange], Field(discriminator="type")]  # noqa: UP007


class Tuning(_Model):
    """HyperparameterTuner settings (``tune`` step). Tuner limits are static: SageMaker takes no parameters there."""

    strategy: Literal["Bayesian", "Random", "Hyperband", "Grid"] = "Bayesian"
    max_jobs: int = Field(12, ge=1, le=500)
    max_parallel_jobs: int = Field(3, ge=1, le=100)
    early_stopping: Literal["Off", "Auto"] = "Auto"
    ranges: dict[str, Range] = Field(default_factory=dict)

    @field_validator("ranges")
    @classmethod
    def _tunable(cls, value: dict) -> dict:
        if not value:
            raise ValueError("give at least one range (tuned keys: " + ", ".join(TUNABLE_HYPERPARAMETERS) + ")")
        for key in value:
            _check_choice(key, TUNABLE_HYPERPARAMETERS, "tunable hyperparameter")
        return value

    @model_validator(mode="after")
    def _refused_by_train(self) -> Tuning:
        # train.py refuses epochs or batch-size < 1 and lr <= 0 (parse_args): a range reaching there fails trials
        for key, minimum in (("epochs", 1), ("batch-size", 1)):
            bounds = self.ranges.get(key)
            if isinstance(bounds, ContinuousRange):
                raise ValueError(f"ranges.{key}: train.py takes an integer; make the range integer or categorical")
            values = bounds.values if isinstance(bounds, CategoricalRange) else (bounds.min,) if bounds else ()
            bad = [v for v in values if not _is_int(v, minimum)]
            if bad:
                raise ValueError(f"ranges.{key}: {bad[0]!r} would be refused by train.py; give integers >= {minimum}")
        lr = self.ranges.get("lr")
        low = lr.values if isinstance(lr, CategoricalRange) else (lr.min,) if lr else ()
        if any(not _is_float(v) or float(v) <= 0 for v in low):
            raise ValueError("ranges.lr: train.py takes a positive learning rate; make min > 0")
        return self

    @model_validator(mode="after")
    def _limits(self) -> Tuning:
        if self.max_parallel_jobs > self.max_jobs:
            raise ValueError(f"max_parallel_jobs {self.max_parallel_jobs} exceeds max_jobs {self.max_jobs}")
        # SageMaker's Grid strategy searches categorical ranges only
        numeric = sorted(k for k, r in self.ranges.items() if not isinstance(r, CategoricalRange))
        if self.strategy == "Grid" and numeric:
            raise ValueError(f"the Grid strategy takes categorical ranges only; make {', '.join(numeric)} categorical")
        return self


class Debugger(_Model):
    """Debugger and profiler rules run by the ``debug`` step; ``managed`` adds SageMaker's managed rules too."""

    managed: bool = False
    save_interval: int = Field(10, ge=1)
    profiler_interval_s: float = Field(0.5, gt=0)
    rules: dict[str, dict[str, Union[str, int, float, bool]]] = Field(default_factory=dict)  # noqa: UP007
    profiler_rules: dict[str, dict[str, Union[str, int, float, bool]]] = Field(default_factory=dict)  # noqa: UP007
    blocking_rules: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _known_rules(self) -> Debugger:
        from imgclf.schemas import DEBUGGER_RULES, PROFILER_RULES

        for rule in self.rules:
            _check_choice(rule, DEBUGGER_RULES, "Debugger rule")
        for rule in self.profiler_rules:
            _check_choice(rule, PROFILER_RULES, "profiler rule")
        for rule in self.blocking_rules:
            _check_choice(rule, (*self.rules, *self.profiler_rules), "configured rule (blocking_rules)")
        return self


class Evaluation(_Model):
    accuracy_threshold: float = Field(0.9, ge=0, le=1.01)
    batch_size: int = Field(256, ge=1)


class Registry(_Model):
    approval_status: Literal["Approved", "Rejected", "PendingManualApproval"] = "PendingManualApproval"
    inference_instance_types: list[str] = Field(default_factory=lambda: ["ml.m5.large"], min_length=1)
    transform_instance_types: list[str] = Field(default_factory=lambda: ["ml.m5.large"], min_length=1)
    content_types: list[str] = Field(default_factory=lambda: ["application/x-image"], min_length=1)
    response_types: list[str] = Field(default_factory=lambda: ["application/json"], min_length=1)

    @field_validator("inference_instance_types", "transform_instance_types")
    @classmethod
    def _types(cls, value: list[str]) -> list[str]:
        return [_instance_type(v) for v in value]


class Stage(_Model):
    """One endpoint of the release path (``deploy.stages.staging`` / ``.production``)."""

    endpoint_name: str
    instance_type: str = "ml.m5.large"
    initial_instance_count: int = Field(1, ge=1)

    _check_type = field_validator("instance_type")(_instance_type)
    _check_name = field_validator("endpoint_name")(_name)


class Stages(_Model):
    """Approval deploys to ``staging``; ``promote`` deploys what staging serves to ``production``."""

    staging: Stage = Field(default_factory=lambda: Stage(endpoint_name="image-classification-staging"))
    production: Stage = Field(default_factory=lambda: Stage(endpoint_name="image-classification"))

    @model_validator(mode="after")
    def _distinct(self) -> Stages:
        if self.staging.endpoint_name == self.production.endpoint_name:
            raise ValueError(f"staging and production both use endpoint {self.staging.endpoint_name!r}: give each "
                             "stage its own endpoint_name")
        return self


class Rollout(_Model):
    """Blue/green update with canary traffic shifting (SageMaker ``DeploymentConfig.BlueGreenUpdatePolicy``).

    ``canary_percent``: share of the traffic (instances in AWS) the new fleet gets first; ``wait_interval_s``: how
    long the canary bakes before the rest shifts; ``termination_wait_s``: how long the old fleet stays after the
    switch; ``canary_requests``: requests the new model must answer before the switch (local mode sends them if
    traffic does not); alarms (5xx, model latency over ``max_model_latency_ms``) roll the update back.
    """

    canary_percent: int = Field(10, ge=1, le=50)
    wait_interval_s: int = Field(300, ge=0, le=3600)
    termination_wait_s: int = Field(0, ge=0, le=3600)
    canary_requests: int = Field(5, ge=1, le=1000)
    max_model_latency_ms: int = Field(2000, ge=1)


class DataCapture(_Model):
    """Endpoint data capture (``DataCaptureConfig``): requests and responses as JSON Lines under ``s3_prefix``."""

    enabled: bool = True
    sampling_percentage: int = Field(100, ge=0, le=100)
    #: under ``s3://<bucket>/<prefix>/<pipeline_name>/``; SageMaker adds ``<endpoint>/<variant>/yyyy/mm/dd/hh``.
    s3_prefix: str = "data-capture"


class Deploy(_Model):
    """Endpoints from registered model packages: the pipeline's ``deploy`` LambdaStep, ``approve`` and ``promote``."""

    enabled: bool = True
    stages: Stages = Field(default_factory=Stages)
    rollout: Rollout = Field(default_factory=Rollout)
    data_capture: DataCapture = Field(default_factory=DataCapture)
    lambda_function_name: str = "image-classification-deploy"
    lambda_role_arn: str | None = None
    lambda_timeout_s: int = Field(120, ge=1, le=900)

    _check_role = field_validator("lambda_role_arn")(_role_arn)

    @model_validator(mode="after")
    def _role_when_enabled(self) -> Deploy:
        if self.enabled and not self.lambda_role_arn:
            raise ValueError("deploy.enabled needs lambda_role_arn (docs/iam/deploy-lambda-role.json)")
        return self


class Notifications(_Model):
    """``topic_arn``: SNS topic told of failed or stopped executions and failed or rolled-back deployments."""

    topic_arn: str | None = None

    @field_validator("topic_arn")
    @classmethod
    def _topic(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[\w-]{1,256}$", value):
            raise ValueError(f"{value!r} is not an SNS topic ARN (arn:aws:sns:<region>:<account>:<name>)")
        return value


class Schedule(_Model):
    role_arn: str | None = None

    _check_role = field_validator("role_arn")(_role_arn)


class Security(_Model):
    kms_key_id: str | None = None
    subnets: list[str] = Field(default_factory=list)
    security_group_ids: list[str] = Field(default_factory=list)
    enable_network_isolation: bool = False
    encrypt_inter_container_traffic: bool = False

    @model_validator(mode="after")
    def _vpc_pairs(self) -> Security:
        if bool(self.subnets) != bool(self.security_group_ids):
            raise ValueError("a VPC needs both subnets and security_group_ids (or neither)")
        return self


class Estimate(_Model):
    """Expected durations of one execution (minutes per job) used by ``estimate``."""

    split_minutes: float = Field(5, ge=0)
    tuning_job_minutes: float = Field(20, ge=0)
    training_minutes: float = Field(25, ge=0)
    debug_minutes: float = Field(5, ge=0)
    evaluate_minutes: float = Field(5, ge=0)
    endpoint_hours_per_month: float = Field(730, ge=0)


# -- experiment tracking -----------------------------------------------------------------------------------------
#: A SageMaker managed MLflow tracking server ARN (the sagemaker-mlflow plugin resolves it to the server's URL).
MLFLOW_SERVER_ARN_PATTERN = re.compile(r"^arn:aws[a-z-]*:sagemaker:[a-z0-9-]+:\d{12}:mlflow-tracking-server/[\w-]+$")
#: Tracking URI schemes MLflow's client resolves (mlflow.tracking._tracking_service.utils).
MLFLOW_URI_PATTERN = re.compile(r"^(https?|file|sqlite|postgresql|mysql|mssql|databricks)[:+]")


class Tracking(_Model):
    """MLflow experiment tracking: one parent run per execution, nested runs per job (docs/tracking.md).

    ``mlflow_uri``: in AWS a SageMaker managed MLflow tracking server ARN or any MLflow tracking URI the jobs can
    reach; ``null`` in local mode means the SQLite store ``<runs>/mlflow.db`` of the workspace. ``experiment``:
    the MLflow experiment name, default the pipeline name.
    """

    enabled: bool = True
    mlflow_uri: str | None = None
    experiment: str | None = None

    @field_validator("mlflow_uri")
    @classmethod
    def _uri(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if value.startswith("arn:") and not MLFLOW_SERVER_ARN_PATTERN.match(value):
            raise ValueError(f"{value!r} is not an MLflow tracking server ARN "
                             "(arn:aws:sagemaker:<region>:<account>:mlflow-tracking-server/<name>)")
        if not value.startswith("arn:") and not MLFLOW_URI_PATTERN.match(value):
            raise ValueError(f"{value!r} is not an MLflow tracking URI (http(s)://..., sqlite:///..., file:///..., "
                             "or a SageMaker MLflow tracking server ARN)")
        return value


class Config(_Model):
    """The whole of ``pipeline.yaml`` (see docs/config.md for every key)."""

    pipeline_name: str = "image-classification"
    region: str = "us-east-1"
    role_arn: str
    bucket: str = "sagemaker-image-classification"
    prefix: str = "pipelines"
    base_job_prefix: str = "imgclf"
    model_package_group: str = "image-classification"
    input_data_uri: str
    framework: Framework = Field(default_factory=Framework)
    instances: Instances = Field(default_factory=Instances)
    split: Split = Field(default_factory=Split)
    training: Training = Field(default_factory=Training)
    tuning: Tuning
    debugger: Debugger = Field(default_factory=Debugger)
    evaluation: Evaluation = Field(default_factory=Evaluation)
    registry: Registry = Field(default_factory=Registry)
    deploy: Deploy = Field(default_factory=Deploy)
    notifications: Notifications = Field(default_factory=Notifications)
    schedule: Schedule = Field(default_factory=Schedule)
    security: Security = Field(default_factory=Security)
    tags: dict[str, str] = Field(default_factory=dict)
    estimate: Estimate = Field(default_factory=Estimate)
    tracking: Tracking = Field(default_factory=Tracking)

    _check_role = field_validator("role_arn")(_role_arn)
    _check_names = field_validator("pipeline_name", "model_package_group")(_name)

    @field_validator("region")
    @classmethod
    def _region(cls, value: str) -> str:
        if not re.match(r"^[a-z]{2}(-gov)?-[a-z]+-\d$", value):
            raise ValueError(f"{value!r} is not an AWS region (like us-east-1)")
        return value

    @field_validator("bucket")
    @classmethod
    def _bucket(cls, value: str) -> str:
        if not BUCKET_PATTERN.match(value):
            raise ValueError(f"{value!r} is not a valid S3 bucket name (3-63 lowercase letters, digits, '.', '-')")
        return value

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        return value.strip("/")

    @field_validator("input_data_uri")
    @classmethod
    def _s3_uri(cls, value: str) -> str:
        if not value.startswith("s3://") or len(value) <= 5:
            raise ValueError(f"{value!r} is not an S3 URI (s3://bucket/prefix)")
        return value

    @model_validator(mode="after")
    def _weights_reachable(self) -> Config:
        # EnableNetworkIsolation "isolates the training container. No inbound or outbound network calls can be
        # made" (API_CreateTrainingJob.html#sagemaker-CreateTrainingJob-request-EnableNetworkIsolation), so
        # torchvision cannot download named weights there.
        weights = self.training.weights
        named = weights.strip().lower() not in NO_WEIGHTS and not is_weights_file(weights)
        if named and self.security.enable_network_isolation:
            raise ValueError(
                f"training.weights {weights!r} is downloaded by torchvision, but security.enable_network_isolation "
                "gives the job no internet: save the weights as a .pth state_dict, upload it to S3 and set "
                "training.weights_uri to its URI and training.weights to its file name"
            )
        return self

    @model_validator(mode="after")
    def _static_and_tuned(self) -> Config:
        both = sorted(set(self.training.hyperparameters) & set(self.tuning.ranges))
        if both:
            raise ValueError(f"{', '.join(both)} both fixed (training.hyperparameters) and tuned (tuning.ranges)")
        return self

    @property
    def experiment_name(self) -> str:
        """The MLflow experiment of this pipeline's runs: ``tracking.experiment`` or the pipeline name."""
        return self.tracking.experiment or self.pipeline_name

    def s3_uri(self, *parts: str) -> str:
        """``s3://<bucket>/<prefix>/<pipeline_name>/<parts...>``: where this pipeline keeps its objects."""
        return "/".join(["s3:/", self.bucket, *([self.prefix] if self.prefix else []), self.pipeline_name, *parts])


def is_weights_file(weights: str) -> bool:
    """True for a state_dict file name (``.pth``/``.pt``), as ``imgclf.models.build_model`` tells them apart."""
    return weights.strip().endswith((".pth", ".pt"))


def _check_order(low: float, high: float) -> None:
    if low > high:
        raise ValueError(f"min {low:g} is greater than max {high:g}; swap them")


def _check_choice(value: str, choices: typing.Iterable[str], what: str) -> None:
    choices = list(choices)
    if value not in choices:
        raise ValueError(f"{value!r} is not a {what}{_suggest(value, choices)} (choices: {', '.join(choices)})")


def _suggest(key: str, choices: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(str(key), list(choices), n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""


def _fields_of(annotation: Any) -> list[str] | None:
    """Field names of the model behind ``annotation`` (unwrapping Optional/Annotated), else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return list(annotation.model_fields)
    if typing.get_origin(annotation) in (Union, types.UnionType, Annotated):
        names: list[str] = []
        for arg in typing.get_args(annotation):
            names.extend(_fields_of(arg) or [])
        return sorted(set(names)) or None
    return None


def _valid_keys(loc: tuple) -> list[str]:
    """The valid keys of the mapping that holds ``loc[-1]`` (walks the Config models along ``loc``)."""
    annotation: Any = Config
    for part in loc[:-1]:
        while typing.get_origin(annotation) is Annotated:
            annotation = typing.get_args(annotation)[0]
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field = annotation.model_fields.get(str(part))
            annotation = field.annotation if field else None
        elif typing.get_origin(annotation) is dict:
            annotation = typing.get_args(annotation)[1]
        elif typing.get_origin(annotation) in (Union, types.UnionType):
            # a discriminated union: the loc names the member by its tag; look for it among the members
            members = [a for a in typing.get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
            annotation = next((m for m in members if str(part) in m.model_fields), None) or members[0]
        else:
            return []
    return _fields_of(annotation) or []


def _explain(error: ValidationError, source: str, overrides: typing.Iterable[str] = ()) -> str:
    """One line per problem: ``<source>: <key path>: <message>``; a problem under a key that a ``--set`` gave is
    reported as ``--set <key=value>: ...`` so that the user looks on the command line, not in the file."""
    given = [(parse_override(text)[0], text) for text in overrides]
    lines = []
    for item in error.errors():
        loc = tuple(item["loc"])
        # the last --set of this key or of a key above or below it (--set tuning.max_job=2 -> loc tuning.max_job)
        message = _message(item, loc)
        by_set = [(path, text) for path, text in given if _overlap(path, loc)]
        # of several --set under a mapping whose check failed, the ones whose key the message names
        named = [text for path, text in by_set if re.search(rf"\b{re.escape(path[-1])}\b", message)]
        if by_set:
            shown = ".".join(str(p) for p in loc if p not in ("continuous", "integer", "categorical"))
            culprits = named or [text for _, text in by_set]
            lines.append(f"{', '.join(f'--set {t}' for t in culprits)}: {shown or '(top level)'}: {message}")
            continue
        # pydantic puts the tag of a discriminated union in the loc ("continuous"); readers know the key path
        shown = ".".join(str(p) for p in loc if p not in ("continuous", "integer", "categorical"))
        lines.append(f"{source}: {shown or '(top level)'}: {message}")
    return "\n".join(lines)


def _message(item: dict, loc: tuple) -> str:
    if item["type"] == "extra_forbidden":
        return f"unknown key{_suggest(str(loc[-1]), _valid_keys(loc))}"
    if item["type"] == "missing":
        return "required key is missing"
    return str(item["msg"]).removeprefix("Value error, ")


def _overlap(path: list[str], loc: tuple) -> bool:
    """Whether an override of ``path`` set the value at ``loc`` (or the mapping holding it, or a key inside).

    A model-level problem (loc ``training``) is the override's when the override is under it: a
    ``--set training.weights=X`` refused by Training's weights check has loc ``("training",)``."""
    keys = [str(p) for p in loc if p not in ("continuous", "integer", "categorical")]
    n = min(len(path), len(keys))
    return n > 0 and path[:n] == keys[:n]


def deep_merge(base: dict, override: dict) -> dict:
    """Return ``base`` with ``override`` merged in: mappings merge key by key, anything else is replaced."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``a.b.c=value`` into (``["a", "b", "c"]``, value as a YAML scalar: ``8`` -> 8, ``true`` -> True).

    Raises ConfigError when there is no ``=`` or the key is empty.
    """
    key, sep, raw = text.partition("=")
    if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
        raise ConfigError(f"--set {text!r}: write it as section.key=value, e.g. --set tuning.max_jobs=8")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
        # YAML 1.1 reads on/off/yes/no as booleans; on the command line they are words (early_stopping=Off).
        if isinstance(value, bool) and raw.strip().lower() not in ("true", "false"):
            value = raw.strip()
    except yaml.YAMLError as error:
        raise ConfigError(f"--set {text!r}: the value is not valid YAML ({error.problem})") from error
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: typing.Iterable[str]) -> dict:
    """Return ``data`` with each ``a.b=value`` override set (creating mappings on the way)."""
    data = copy.deepcopy(data)
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[path[-1]] = value
    return data


def load_config(path: str | Path | None = None, overrides: typing.Iterable[str] = (), local: bool = False) -> Config:
    """Read ``pipeline.yaml``, merge its ``local:`` block when ``local``, apply ``--set`` overrides, validate.

    Args:
        path: the YAML file (default: the repository's ``pipeline.yaml``).
        overrides: ``section.key=value`` strings, applied last (after the local block).
        local: merge the file's ``local:`` block over the top-level values (local mode).

    Raises:
        ConfigError: the file is missing or not YAML, or any value is invalid (one line per problem).
    """
    path = Path(path) if path else DEFAULT_CONFIG_PATH
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError as error:
        raise ConfigError(f"{path}: no such config file; pass --config <path to pipeline.yaml>") from error
    except IsADirectoryError as error:
        raise ConfigError(f"{path}: is a folder; pass --config <path to pipeline.yaml>") from error
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot be read as a UTF-8 text file ({error}); pass --config <path to "
                          "pipeline.yaml>") from error
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from error
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level")
    local_block = data.pop("local", None) or {}
    if not isinstance(local_block, dict):
        raise ConfigError(f"{path}: local: expected a mapping of overrides")
    overrides = list(overrides)
    # Both views of the file are validated on every load, so a mistake in the local block shows before the first
    # local run; the overrides apply to the view that this command uses only (--set training.model=lenet for a
    # local run need not fit the AWS view's ImageNet weights).
    aws_overrides, local_overrides = ([], overrides) if local else (overrides, [])
    aws = _validate(apply_overrides(data, aws_overrides), path.name, aws_overrides)
    local_config = _validate(apply_overrides(deep_merge(data, local_block), local_overrides), f"{path.name} (local:)",
                             local_overrides)
    return local_config if local else aws


def _validate(data: dict, source: str, overrides: list[str]) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_explain(error, source, overrides)) from None
