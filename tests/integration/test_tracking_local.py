"""Experiment tracking end to end: ``run-local`` on real digits, then the MLflow client (not the store's files)
finds what the execution logged; and an unreachable tracking server costs one warning per job, nothing more.

One module-scoped pair of executions (2 tuning trials of 2 epochs at 16 px, then 1 trial against a closed port).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from imgclf.metrics import format_metric_line
from pipeline.local.registry import ModelRegistry
from pipeline.local.report import write_report
from pipeline.local.store import Store
from tests.conftest import ROOT

pytestmark = pytest.mark.slow

INPUT_URI = "s3://sagemaker-image-classification/data/tracking-test-digits"
SETTINGS = ["--set", "tuning.max_jobs=2", "--set", "tuning.max_parallel_jobs=2",
            "--set", "tuning.ranges.epochs.min=2", "--set", "tuning.ranges.epochs.max=2",
            "--set", "tuning.ranges.batch-size.values=[32]", "--set", "training.image_size=16",
            "--set", "training.model=lenet",
            "--set", "debugger.blocking_rules=[]", "--param", "AccuracyThreshold=0.0",
            "--param", f"InputDataUri={INPUT_URI}"]  # fmt: skip
#: The order of train.py's metric line (its history record), epoch first.
EPOCH_METRICS = ("train_loss", "train_accuracy", "validation_loss", "validation_accuracy", "lr", "epoch_seconds")
WARNING = "warning: experiment tracking off"


def _run_local(root: Path, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    runs = root / "runs"
    before = {p.name for p in runs.iterdir()} if runs.is_dir() else set()
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "run-local", "--store", str(root / "store"), "--runs", str(runs),
         "--data", str(root / "digits"), "--no-logs", "--cpus", "2", *SETTINGS, *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    new = [p for p in runs.iterdir() if p.name not in before and (p / "execution.json").is_file()]
    assert len(new) == 1, result.stdout + result.stderr
    return result, json.loads((new[0] / "execution.json").read_text())


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    from mlflow.tracking import MlflowClient

    from pipeline.sample_data import write_digits

    root = tmp_path_factory.mktemp("tracking")
    write_digits(root / "digits", per_class=30)
    result, record = _run_local(root)
    assert record["PipelineExecutionStatus"] == "Succeeded", result.stdout + result.stderr
    client = MlflowClient(tracking_uri=f"sqlite:///{(root / 'runs' / 'mlflow.db').resolve()}")
    return root, record, client


def _steps(record: dict) -> dict[str, dict]:
    return {step["StepName"]: step for step in record["Steps"]}


def _children(client, record: dict) -> list:
    mlflow = record["MLflow"]
    query = f"tags.`mlflow.parentRunId` = '{mlflow['RunId']}'"
    return client.search_runs([mlflow["ExperimentId"]], filter_string=query)


def _output_json(root: Path, record: dict, step: str, file_name: str) -> dict:
    outputs = _steps(record)[step]["Properties"]["ProcessingOutputConfig"]["Outputs"]
    return Store(root / "store").read_json(f"{outputs[0]['S3Output']['S3Uri'].rstrip('/')}/{file_name}")


def test_parent_run_names_the_execution(tracked):
    root, record, client = tracked
    query = f"tags.`sagemaker.pipeline_execution_id` = '{record['PipelineExecutionId']}'"
    found = client.search_runs([record["MLflow"]["ExperimentId"]], filter_string=query)
    assert [run.info.run_id for run in found] == [record["MLflow"]["RunId"]]
    parent = found[0]
    assert client.get_experiment(parent.info.experiment_id).name == "image-classification"
    assert parent.info.status == "FINISHED"
    tags = parent.data.tags
    assert tags["sagemaker.pipeline_execution_arn"] == record["PipelineExecutionArn"]
    assert tags["pipeline.input_data_uri"] == INPUT_URI
    assert len(tags["pipeline.definition_sha256"]) == 64 and len(tags["pipeline.code_bundle_sha256"]) == 64
    assert parent.data.params == {key: str(value) for key, value in record["Parameters"].items()}
    package_arn = _steps(record)["register-RegisterModel"]["Properties"]["ModelPackageArn"]
    assert tags["sagemaker.model_package_arn"] == package_arn
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"execution.json", "summary.txt"} <= artifacts
    # the model package's metadata leads back to the run; the report names it
    package = ModelRegistry(Store(root / "store")).describe_model_package(package_arn)
    assert package["CustomerMetadataProperties"] == {"mlflow_experiment": "image-classification",
                                                     "pipeline_execution_arn": record["PipelineExecutionArn"]}
    report = write_report(root / "runs" / record["PipelineExecutionId"]).read_text()
    assert f"MLflow run {record['MLflow']['RunId']}" in report


def test_one_nested_run_per_trial_and_one_for_the_training_job(tracked):
    _, record, client = tracked
    children = _children(client, record)
    by_step: dict[str, list] = {}
    for run in children:
        by_step.setdefault(run.data.tags["pipeline.step"], []).append(run)
    trials = _steps(record)["tune"]["Properties"]["TrainingJobSummaries"]
    assert sorted(r.data.tags["sagemaker.job_name"] for r in by_step["tune"]) == sorted(
        t["TrainingJobName"] for t in trials)
    assert [r.data.tags["sagemaker.job_name"] for r in by_step["train"]] == [
        _steps(record)["train"]["Properties"]["TrainingJobName"]]
    assert len(by_step["evaluate"]) == len(by_step["debug"]) == 1
    best = _steps(record)["tune"]["Properties"]["BestTrainingJob"]
    marked = [r.data.tags["sagemaker.job_name"] for r in by_step["tune"] if r.data.tags.get("pipeline.best_trial")]
    assert marked == [best["TrainingJobName"]]
    for run in by_step["tune"]:  # the tuned hyperparameters are the run's params
        summary = next(t for t in trials if t["TrainingJobName"] == run.data.tags["sagemaker.job_name"])
        for key, value in summary["TunedHyperParameters"].items():
            assert float(run.data.params[key]) == pytest.approx(float(json.loads(value)), rel=1e-6), key


def test_epoch_metrics_are_the_values_the_training_log_printed(tracked):
    root, record, client = tracked
    logs = {job["JobName"]: job["Log"] for step in record["Steps"] for job in step.get("Jobs") or []}
    training_runs = [r for r in _children(client, record) if r.data.tags["sagemaker.job_type"] == "TrainingJob"]
    assert len(training_runs) == 3
    for run in training_runs:
        log = (root / "runs" / record["PipelineExecutionId"] / logs[run.data.tags["sagemaker.job_name"]]).read_text()
        printed = [line for line in log.splitlines() if line.startswith("epoch=")]
        history = {key: client.get_metric_history(run.info.run_id, key) for key in EPOCH_METRICS}
        assert sorted(m.step for m in history["validation_accuracy"]) == [1, 2]
        rebuilt = []
        for epoch in (1, 2):
            values = {key: next(m.value for m in history[key] if m.step == epoch) for key in EPOCH_METRICS}
            rebuilt.append(format_metric_line(epoch, **values))
        assert rebuilt == printed


def test_evaluation_and_rule_verdicts(tracked):
    root, record, client = tracked
    runs = {r.data.tags["pipeline.step"]: r for r in _children(client, record)}
    evaluation = _output_json(root, record, "evaluate", "evaluation.json")
    metrics = runs["evaluate"].data.metrics
    assert metrics["test_accuracy"] == evaluation["multiclass_classification_metrics"]["accuracy"]["value"]
    for label, values in evaluation["per_class"].items():
        assert metrics[f"precision/{label}"] == values["precision"]
        assert metrics[f"recall/{label}"] == values["recall"]
    matrix_file = client.download_artifacts(runs["evaluate"].info.run_id, "confusion_matrix.json", str(root))
    assert json.loads(Path(matrix_file).read_text()) == evaluation["confusion_matrix"]
    debug = _output_json(root, record, "debug", "debug.json")
    verdicts = {key.removeprefix("rule."): value for key, value in runs["debug"].data.tags.items()
                if key.startswith("rule.")}  # fmt: skip
    assert verdicts == {rule: result["status"] for rule, result in debug["rules"].items()}
    assert runs["debug"].data.metrics["blocking_issues_found"] == debug["summary"]["blocking_issues_found"]


def test_unreachable_tracking_server_is_one_warning_per_job_and_the_execution_succeeds(tracked):
    root, _, _ = tracked
    result, record = _run_local(root, "--set", "tracking.mlflow_uri=http://127.0.0.1:9",
                                "--set", "tuning.max_jobs=1", "--set", "tuning.max_parallel_jobs=1")
    assert record["PipelineExecutionStatus"] == "Succeeded", result.stdout + result.stderr
    assert "MLflow" not in record
    console = result.stdout + result.stderr
    assert console.count(WARNING) == 1, console
    run_dir = root / "runs" / record["PipelineExecutionId"]
    tracked_jobs = [job for step in record["Steps"] if step["StepName"] in ("tune", "train", "debug", "evaluate")
                    for job in step.get("Jobs") or []]  # fmt: skip
    assert len(tracked_jobs) == 4
    for job in tracked_jobs:
        log = (run_dir / job["Log"]).read_text()
        assert job["Status"] == "Completed"
        assert log.count(WARNING) == 1, log[-2000:]
        assert "WARNING mlflow" not in log and "Retrying" not in log, log[-2000:]
