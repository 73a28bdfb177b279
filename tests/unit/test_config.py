"""pipeline.yaml validation: one clear message per mistake, --set overrides, the local: block."""

from __future__ import annotations

import pytest
import yaml

from pipeline.config import DEFAULT_CONFIG_PATH, ConfigError, load_config, parse_override


def write(tmp_path, data: dict):
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@pytest.fixture
def base() -> dict:
    return yaml.safe_load(DEFAULT_CONFIG_PATH.read_text(encoding="utf-8"))


def test_default_config_loads_and_local_block_merges():
    aws = load_config()
    local = load_config(local=True)
    assert aws.training.image_size == local.training.image_size == 224  # the digits' 28 px: make run's --set
    assert (local.tuning.max_jobs, local.tuning.max_parallel_jobs) == (3, 2)
    assert local.registry.approval_status == "Approved"
    # deep merge: keys the local block does not name keep the top-level values
    assert local.tuning.ranges["weight-decay"] == aws.tuning.ranges["weight-decay"]
    assert local.training.hyperparameters["optimizer"] == aws.training.hyperparameters["optimizer"]
    assert local.instances.training_type == aws.instances.training_type


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("tuning.max_job=8", "tuning.max_job: unknown key; did you mean 'max_jobs'?"),
        ("instances.training_typ=ml.p3.2xlarge", "instances.training_typ: unknown key; did you mean 'training_type'?"),
        ("tuning.ranges.lr.mn=0.5", "tuning.ranges.lr.mn: unknown key; did you mean 'min'?"),
        ("debuger.managed=true", "debuger: unknown key; did you mean 'debugger'?"),
    ],
)
def test_mistyped_key_names_the_closest(override, expected):
    with pytest.raises(ConfigError) as error:
        load_config(overrides=[override])
    assert expected in str(error.value)


def test_mistyped_hyperparameter_and_rule_suggest(base, tmp_path):
    base["training"]["hyperparameters"]["weight_decay"] = 0.1
    with pytest.raises(ConfigError, match="'weight_decay' is not a train.py hyperparameter; did you mean 'weight-"):
        load_config(write(tmp_path, base))
    with pytest.raises(ConfigError, match="'Overfitt' is not a Debugger rule; did you mean 'Overfit'"):
        load_config(overrides=["debugger.rules.Overfitt.patience=1"])


@pytest.mark.parametrize(
    "arn",
    ["my-role", "arn:aws:iam::12345:role/x", "arn:aws:iam::111122223333:user/x", "arn:aws:s3:::bucket"],
)
def test_bad_role_arn(arn):
    with pytest.raises(ConfigError, match="role_arn: .* is not an IAM role ARN"):
        load_config(overrides=[f"role_arn={arn}"])


def test_range_min_greater_than_max():
    with pytest.raises(ConfigError) as error:
        load_config(overrides=["tuning.ranges.epochs.min=20", "tuning.ranges.epochs.max=5"])
    assert "tuning.ranges.epochs: min 20 is greater than max 5" in str(error.value)
    assert str(error.value).count("\n") == 0  # one problem, one line


def test_log_scale_needs_positive_min_and_parallel_within_max():
    with pytest.raises(ConfigError, match="Logarithmic scaling needs min > 0"):
        load_config(overrides=["tuning.ranges.lr.min=0"])
    with pytest.raises(ConfigError, match="max_parallel_jobs 9 exceeds max_jobs 4"):
        load_config(overrides=["tuning.max_jobs=4", "tuning.max_parallel_jobs=9"])


def test_local_block_errors_are_reported_without_local(base, tmp_path):
    base["local"]["tuning"]["max_jbs"] = 3
    with pytest.raises(ConfigError, match=r"\(local:\): tuning.max_jbs: unknown key; did you mean 'max_jobs'"):
        load_config(write(tmp_path, base))


def test_set_values_are_yaml_scalars():
    assert parse_override("tuning.max_jobs=8") == (["tuning", "max_jobs"], 8)
    assert parse_override("debugger.managed=true") == (["debugger", "managed"], True)
    assert parse_override("security.kms_key_id=null") == (["security", "kms_key_id"], None)
    assert parse_override("training.weights=DEFAULT") == (["training", "weights"], "DEFAULT")
    config = load_config(overrides=["tuning.max_jobs=8", "evaluation.accuracy_threshold=0.95"])
    assert config.tuning.max_jobs == 8 and config.evaluation.accuracy_threshold == 0.95
    with pytest.raises(ConfigError, match="write it as section.key=value"):
        parse_override("tuning.max_jobs")


def test_other_checks(base, tmp_path):
    with pytest.raises(ConfigError, match="not a SageMaker instance type"):
        load_config(overrides=["instances.training_type=g4dn.xlarge"])
    with pytest.raises(ConfigError, match="make it 1"):
        load_config(overrides=["split.train_fraction=0.9"])
    with pytest.raises(ConfigError, match="both fixed .* and tuned"):
        load_config(overrides=["training.hyperparameters.lr=0.1"])
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.yaml")
    del base["role_arn"]
    with pytest.raises(ConfigError, match="role_arn: required key is missing"):
        load_config(write(tmp_path, base))


def test_train_py_accepts_every_configurable_hyperparameter():
    import subprocess
    import sys

    from pipeline._entrypoints import ENTRYPOINTS_DIR
    from pipeline.config import TRAIN_HYPERPARAMETERS

    help_text = subprocess.run(
        [sys.executable, str(ENTRYPOINTS_DIR / "train.py"), "--help"], capture_output=True, text=True, check=True
    ).stdout
    missing = [name for name in TRAIN_HYPERPARAMETERS if f"--{name}" not in help_text]
    assert missing == []
