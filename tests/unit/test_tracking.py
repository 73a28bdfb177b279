"""Experiment tracking pieces that need no pipeline run: config, the definition's Environment, the job client
against a real SQLite store and against an unreachable server, and the tracking-ui command line."""

from __future__ import annotations

import json

import pytest

from pipeline.config import ConfigError, load_config
from tests.conftest import ENTRYPOINTS, run_script
from tests.unit.test_definition import no_network  # noqa: F401  (fixture)

ARN = "arn:aws:sagemaker:us-east-1:111122223333:mlflow-tracking-server/image-classification"


def _steps(definition: dict) -> dict[str, dict]:
    found = {}
    for step in definition["Steps"]:
        found[step["Name"]] = step
        for key in ("IfSteps", "ElseSteps"):
            found.update({s["Name"]: s for s in step.get("Arguments", {}).get(key, [])})
    return found


def _environment(step: dict) -> dict:
    arguments = step["Arguments"]
    return (arguments.get("TrainingJobDefinition") or arguments).get("Environment") or {}


def test_config_defaults_and_errors():
    config = load_config(local=True)
    assert config.tracking.enabled and config.tracking.mlflow_uri is None
    assert config.experiment_name == config.pipeline_name
    with pytest.raises(ConfigError, match="tracking.mlflow_uri: .* not an MLflow tracking server ARN"):
        load_config(overrides=["tracking.mlflow_uri=arn:aws:sagemaker:us-east-1:1:mlflow"])
    with pytest.raises(ConfigError, match="not an MLflow tracking URI"):
        load_config(overrides=["tracking.mlflow_uri=my-server"])
    assert load_config(overrides=[f"tracking.mlflow_uri={ARN}"]).tracking.mlflow_uri == ARN


def test_definition_with_a_tracking_server_stays_offline_and_carries_only_static_values(no_network):  # noqa: F811
    """With a tracking server ARN the definition is built offline, twice byte-identical, and the tracked jobs'
    Environment holds the ARN, the experiment and the step name: nothing per execution (the cache key)."""
    arn = ARN
    from pipeline.build import definition_json

    config = load_config(overrides=[f"tracking.mlflow_uri={arn}"])
    first, second = definition_json(config), definition_json(config)
    assert first == second
    steps = _steps(json.loads(first))
    for name in ("tune", "train", "debug", "evaluate"):
        arguments = steps[name]["Arguments"]
        environment = (arguments.get("TrainingJobDefinition") or arguments)["Environment"]
        assert environment["MLFLOW_TRACKING_URI"] == arn
        assert environment["MLFLOW_EXPERIMENT_NAME"] == "image-classification"
        assert environment["PIPELINE_STEP_NAME"] == name
        assert "Get" not in json.dumps(environment), environment  # no execution variable
    assert "MLFLOW_TRACKING_URI" not in json.dumps(steps["split"]["Arguments"])


def test_tracking_off_leaves_no_tracking_variable_in_the_definition(no_network):  # noqa: F811
    from pipeline.build import definition_json

    text = definition_json(load_config(overrides=["tracking.enabled=false"]))
    assert "MLFLOW_" not in text and "PIPELINE_STEP_NAME" not in text


def test_unreachable_server_is_one_warning_and_the_script_goes_on(tmp_path):
    """A job whose tracking server refuses connections prints one warning, logs nothing, and exits 0."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import sys\nsys.path.insert(0, sys.argv[1])\nfrom imgclf import tracking\n"
        "run = tracking.JobRun.start('TrainingJob', name='probe')\n"
        "run.log_params({'lr': 0.1}); run.log_metrics({'validation_accuracy': 0.5}, step=1); run.end()\n"
        "print('active', run.active)\n"
    )
    result = run_script(str(probe), str(ENTRYPOINTS), env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:9",
                                                           "MLFLOW_EXPERIMENT_NAME": "x"})
    output = result.stdout + result.stderr
    assert "active False" in result.stdout
    assert output.count("warning") + output.count("WARNING") == 1, output
    assert "warning: experiment tracking off for this job (MLFLOW_TRACKING_URI=http://127.0.0.1:9)" in output


def test_tracking_ui_serves_the_workspace_store_on_loopback(tmp_path):
    from pipeline.commands.tracking import ui_command
    from pipeline.errors import UserError

    with pytest.raises(UserError, match="no tracking store yet"):
        ui_command(tmp_path, 5000)
    (tmp_path / "mlflow.db").write_bytes(b"")
    command = ui_command(tmp_path, 5123)
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert command[command.index("--backend-store-uri") + 1] == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert command[command.index("--port") + 1] == "5123"
    assert json.dumps(command)  # plain strings
