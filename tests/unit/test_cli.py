"""A newcomer's first hour: bad input is one clear line (exit 2) before anything runs or costs money, and output
stays copyable. Every command runs in-process through ``pipeline.cli.main``."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shlex
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from pipeline.cli import build_parser, main, make_console
from pipeline.config import DEFAULT_CONFIG_PATH, MODEL_NAMES, ConfigError, load_config
from pipeline.serving.server import free_port

ROOT = Path(__file__).resolve().parents[2]
NO_AWS = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


def error_of(capsys, *argv: str) -> str:
    """Run the command; assert it refused with exit status 2 and one ``error:`` line; return that line."""
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("error: ") and "Traceback" not in "\n".join(err), err
    return err[-1]


# -- the config refuses at load what a step script would refuse ---------------------------------------------------
@pytest.mark.parametrize(("override", "expected"), [
    ("training.model=resnet1800", "training.model: 'resnet1800' is not a model train.py can build; did you mean "
                                  "'resnet18'?"),
    ("training.weights=IMAGENET1K_V9", "weights 'IMAGENET1K_V9' are not torchvision weights of resnet50; did you "
                                       "mean 'IMAGENET1K_V2'?"),
    ("training.hyperparameters.optimizer=adam", "optimizer: 'adam' would be refused by train.py; give sgd or adamw"),
    ("training.hyperparameters.amp=sometimes", "amp: 'sometimes' would be refused by train.py; give auto, true or "
                                               "false"),
    ("training.hyperparameters.workers=-1", "workers: -1 would be refused by train.py; give auto or an integer >= 0"),
    ("tuning.ranges.epochs.min=0", "ranges.epochs: 0 would be refused by train.py; give integers >= 1"),
    ("tuning.max_job=2", "tuning.max_job: unknown key; did you mean 'max_jobs'?"),
])  # fmt: skip
def test_set_errors_name_the_set_and_what_train_py_would_refuse(override, expected):
    with pytest.raises(ConfigError) as caught:
        load_config(overrides=[override])
    message = str(caught.value)
    assert message.startswith(f"--set {override}: "), message  # not "pipeline.yaml: ..."
    assert expected in message


def test_of_several_sets_the_one_the_message_names_is_blamed():
    with pytest.raises(ConfigError) as caught:
        load_config(overrides=["tuning.ranges.lr.min=0.01", "tuning.max_jobs=2"])
    assert str(caught.value) == "--set tuning.max_jobs=2: tuning: max_parallel_jobs 3 exceeds max_jobs 2"


def test_a_bad_model_in_the_file_names_the_file(tmp_path):
    data = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    data["training"]["model"] = "resnet1800"
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"^pipeline.yaml: training.model: 'resnet1800' is not a model"):
        load_config(path)
    assert load_config().training.weights == "IMAGENET1K_V2"  # the AWS default: pretrained ResNet50
    assert load_config(local=True).training.weights == "none"  # local mode trains from scratch
    assert load_config(overrides=["training.weights=DEFAULT", "training.model=resnet50"]).training.weights


def test_model_names_are_train_py_s():
    from imgclf.models import MODEL_NAMES as TRAIN_PY_MODELS

    assert MODEL_NAMES == TRAIN_PY_MODELS


def test_start_checks_its_parameters_before_any_aws_call(capsys, monkeypatch):
    for key, value in NO_AWS.items():  # a call that got through would fail on the closed port instead
        monkeypatch.setenv(key, value)
    line = error_of(capsys, "start", "--param", "Foo=1")
    assert "--param Foo: not a parameter of this pipeline" in line and "AccuracyThreshold" in line
    line = error_of(capsys, "start", "--param", "AccuracyThreshold=abc")
    assert "--param AccuracyThreshold=abc: not a valid Float; nothing was started" in line


@pytest.mark.parametrize("layout", ["empty", "flat", "one class"])
def test_run_local_checks_the_data_folder_before_the_execution_starts(capsys, tmp_path, layout):
    from pipeline.sample_data import write_digits

    data = tmp_path / "my photos"
    data.mkdir()
    if layout == "flat":
        write_digits(tmp_path / "tree", per_class=2)
        for image in (tmp_path / "tree" / "3_three").iterdir():
            image.rename(data / image.name)
    elif layout == "one class":
        write_digits(tmp_path / "tree", per_class=2)
        (tmp_path / "tree" / "3_three").rename(data / "3_three")
    line = error_of(capsys, "run-local", "--data", str(data), "--store", str(tmp_path / "store"), "--runs",
                    str(tmp_path / "runs"))  # fmt: skip
    assert f"--data {data}: " in line and "<class>/<image>" in line
    assert {"empty": "the folder is empty", "flat": "2 image(s) but no class folder",
            "one class": "at least 2 class folders with images, found 1 among: 3_three (2)"}[layout] in line
    assert not (tmp_path / "runs").exists()  # nothing started: no execution recorded


@pytest.mark.parametrize(("argv", "expected"), [
    (["sample-data", "--per-class", "0"], "--per-class must be >= 1, got 0"),
    (["sample-data", "--out", str(ROOT / "README.md")], "is a file, not a folder"),
    (["definition", "--config", str(ROOT / "docs")], "is a folder; pass --config <path to pipeline.yaml>"),
])  # fmt: skip
def test_bad_arguments_are_one_line_not_a_traceback(capsys, argv, expected):
    assert expected in error_of(capsys, *argv)


def test_serve_refuses_a_bad_archive_before_announcing_anything(capsys, tmp_path):
    archive = tmp_path / "model.tar.gz"
    archive.write_text("not an archive")
    line = error_of(capsys, "serve", "--model", str(archive), "--port", str(free_port()))
    assert "is not a tar archive" in line
    assert capsys.readouterr().out == ""  # no "serving ..." line, no Uvicorn banner


def test_serve_loads_the_model_before_announcing_anything(capsys, tmp_path):
    """A gzip tar that holds no model: the model is loaded (and fails) before the "serving" line and Uvicorn's
    banner, and the failure is said once."""
    archive = tmp_path / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(ROOT / "README.md", arcname="README.md")
    assert main(["serve", "--model", str(archive), "--port", str(free_port())]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # no "serving ..." line, no Uvicorn banner
    assert captured.err.count("failed to load") == 1, captured.err
    assert captured.err.strip().splitlines()[-1].startswith(f"error: --model {archive}: the model failed to load")


def test_load_counts_only_answered_requests(capsys, digits_dir):
    from pipeline.serving.load import run_load

    url = f"http://127.0.0.1:{free_port()}"
    report = run_load(url, digits_dir, concurrency=2, requests=20, duration_limit_s=10)
    assert report.requests == 20 and report.answered == 0 and report.requests_per_s == 0.0
    assert report.latencies_ms == [] and report.statuses == {"ConnectError": 20}
    assert main(["load", "--endpoint", url, "--images", str(digits_dir), "--requests", "20"]) == 1
    out = capsys.readouterr().out
    assert "no request was answered" in out and "latency p50" not in out


def test_predict_endpoint_name_uses_the_config_region(capsys, monkeypatch, tmp_path, digits_dir):
    for key, value in NO_AWS.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE", "AWS_CONFIG_FILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    data = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    data["region"] = "eu-west-2"
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump(data))
    image = next((digits_dir / "7_seven").iterdir())
    line = error_of(capsys, "predict", str(image), "--endpoint-name", "image-classification", "--config", str(config))
    assert "region eu-west-2" in line  # the call went to the config's region (and failed on the closed port)


def test_every_command_has_a_description():
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    for name, sub in subparsers.choices.items():
        assert sub.description and len(sub.description) > 20, name


# -- output that stays copyable ------------------------------------------------------------------------------------
def test_output_off_a_terminal_never_wraps_an_arn():
    from rich.table import Table

    arn = "arn:aws:sagemaker:us-east-1:123456789012:model-package/image-classification-with-a-long-name/17"
    console = make_console()
    console.file = buffer = io.StringIO()
    assert not console.is_terminal
    console.print(f"registered {arn} from s3://bucket/pipelines/image-classification/train/output/model.tar.gz")
    table = Table()
    table.add_column("field")
    table.add_column("value")
    table.add_row("ModelPackageArn", arn)
    console.print(table)
    lines = buffer.getvalue().splitlines()
    assert any(f"registered {arn} from s3://" in line for line in lines)
    assert any(f"ModelPackageArn │ {arn}" in line for line in lines)


def test_progress_prints_plain_lines_in_ci(monkeypatch):
    from rich.console import Console

    from pipeline.local.progress import ProgressDisplay

    monkeypatch.delenv("CI", raising=False)  # the CI that runs this suite sets it
    terminal = Console(file=io.StringIO(), force_terminal=True)
    assert ProgressDisplay(["split"], {"split": "Processing"}, console=terminal).live is not None
    monkeypatch.setenv("CI", "true")
    display = ProgressDisplay(["split"], {"split": "Processing"}, console=terminal)
    assert display.live is None
    display.on_event("split", {"StepStatus": "Succeeded", "DurationSeconds": 1.5, "Detail": ""})
    assert "step split: Succeeded in 1.5s" in terminal.file.getvalue()


def test_library_log_levels_are_set_by_configure_logging_not_by_imports():
    """Importing the package and every command module leaves loggers alone; ``configure_logging`` quiets the SDK's
    stdout lines and keeps botocore's DEBUG records (request headers: the session token) off even under -v."""
    names = ("sagemaker.config", "botocore", "boto3", "s3transfer", "httpx", "matplotlib")
    code = ("import json, logging, sys; import pipeline.cli as cli; cli.build_parser(); "
            f"levels = lambda: [logging.getLogger(n).level for n in {names!r}]; before = levels(); "
            "cli.configure_logging(verbose=True); print(json.dumps([before, levels(), 'sagemaker' in sys.modules]))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    before, after, sdk_imported = json.loads(result.stdout)
    assert before == [logging.NOTSET] * len(names)
    assert not sdk_imported  # so the CLI sets sagemaker.config's level before the SDK's first import
    assert dict(zip(names, after, strict=True)) == {
        "sagemaker.config": logging.WARNING, "botocore": logging.INFO, "boto3": logging.INFO,
        "s3transfer": logging.INFO, "httpx": logging.NOTSET, "matplotlib": logging.WARNING}  # fmt: skip


def test_run_local_runs_a_definition_file_and_resumes_it_in_a_fresh_process(tmp_path):
    # a fresh interpreter, as `python -m pipeline` is: imgclf is importable only through pipeline's own path setup
    definition = {"Version": "2020-12-01", "Parameters": [{"Name": "Why", "Type": "String", "DefaultValue": "x"}],
                  "Steps": [{"Name": "stop", "Type": "Fail", "Arguments": {"ErrorMessage": {"Get": "Parameters.Why"}}}]}
    (tmp_path / "definition.json").write_text(json.dumps(definition))
    common = ["--store", str(tmp_path / "store"), "--runs", str(tmp_path / "runs"), "--no-logs", "--cpus", "1"]
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "CI")}

    def run_local(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pipeline", "run-local", *common, *argv], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)  # fmt: skip

    first = run_local("--definition", str(tmp_path / "definition.json"), "--param", "Why=because")
    assert first.returncode == 1, first.stdout + first.stderr
    execution_id = re.search(r"resume with: python -m pipeline run-local --resume (\w+)", first.stdout).group(1)
    assert "step stop: Failed" in first.stdout and "reason: Step stop: because" in first.stdout
    resumed = run_local("--resume", execution_id)  # the same definition and parameters, from runs/<id>
    assert resumed.returncode == 1 and "reason: Step stop: because" in resumed.stdout, resumed.stdout + resumed.stderr


def test_no_font_cache_message_on_a_fresh_machine(tmp_path):
    code = ("from pipeline.cli import configure_logging; configure_logging(False); "
            "import matplotlib.pyplot")  # fmt: skip
    env = {**os.environ, "MPLCONFIGDIR": str(tmp_path / "fresh")}  # no font cache yet: matplotlib builds one
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "fresh").is_dir()  # the cache was built in this run
    assert "fontManager" not in result.stdout + result.stderr


# -- the digits' 28 px belong to `make run` ---------------------------------------------------------------------------
def test_own_photos_train_at_the_configured_size_and_make_run_sets_the_digits_size():
    assert load_config(local=True).training.image_size == load_config().training.image_size == 224
    run_target = re.search(r"^run:.*?(?=^\S)", (ROOT / "Makefile").read_text(), re.S | re.M).group(0)
    assert "run-local --data data/digits $(DIGITS_SETTINGS)" in run_target
    assert digits_config().training.image_size == 28


def digits_config():
    """The local config that `make run` trains the bundled digits with: the Makefile's DIGITS_SETTINGS applied."""
    makefile = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    words = shlex.split(re.search(r"^DIGITS_SETTINGS := (.*)$", makefile, re.M).group(1))
    assert words[::2] == ["--set"] * (len(words) // 2), words
    return load_config(local=True, overrides=words[1::2])


def test_make_run_trains_lenet_from_scratch_on_the_digits_while_the_aws_view_keeps_imagenet_weights():
    """`--set training.model=lenet` applies to the local view only: the AWS view's ImageNet weights (which lenet
    does not have) are no reason to refuse a local run."""
    config = digits_config()
    assert (config.training.model, config.training.weights) == ("lenet", "none")
    assert config.training.hyperparameters["augment"] == "light"
    assert load_config().training.weights == "IMAGENET1K_V2"
    with pytest.raises(ConfigError, match=r"lenet has no torchvision weights"):
        load_config(overrides=["training.model=lenet"])  # the AWS view with its ImageNet weights


def test_the_estimate_is_measured_at_the_chosen_size():
    from pipeline.local.preflight import describe, estimate_run

    small = estimate_run(load_config(local=True, overrides=["training.image_size=32"]), images=1000, threads=1)
    large = estimate_run(load_config(local=True, overrides=["training.image_size=96"]), images=1000, threads=1)
    assert large.image_seconds > small.image_seconds > 0  # 9x the pixels: measurably slower here
    assert large.seconds / large.image_seconds == pytest.approx(small.seconds / small.image_seconds)
    line = describe(large)
    assert line.startswith("training resnet18 (weights none) at 96 px (training.image_size): about ")
    assert "of training on this machine" in line and "ms per training image" in line
