"""End to end: the real pipeline definition run by ``run-local`` on a small slice of the real MNIST digits.

One module-scoped run is shared by the assertions (the suite must stay short on a 2-core machine):

1. ``run-local`` with ``InputDataUri`` pointing at an empty store location: ``split`` fails on purpose;
2. the digits are linked there and ``--resume`` finishes the same execution: split, tune (2 trials), train, debug,
   evaluate, quality_gate, register, deploy;
3. a second execution with ``AccuracyThreshold=1.01``: the finished steps are cache hits and the FailStep ends it
   with the measured accuracy in its message.
"""

from __future__ import annotations

import io
import json
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from pipeline.cli import main
from pipeline.local.registry import ModelRegistry, resolve_model_package
from pipeline.local.store import Store
from pipeline.serving.server import start_in_background

pytestmark = pytest.mark.slow

INPUT_URI = "s3://sagemaker-image-classification/data/local-test-digits"
# Small and fast: two 1-epoch tuning trials of the LeNet at 16 px; no rule blocks the gate so a 1-epoch model can
# register.
SETTINGS = [
    "--set",
    "tuning.max_jobs=2",
    "--set",
    "tuning.max_parallel_jobs=2",
    "--set",
    "tuning.ranges.epochs.min=1",
    "--set",
    "tuning.ranges.epochs.max=1",
    "--set",
    "training.image_size=16",
    "--set",
    "training.model=lenet",
    "--set",
    "debugger.blocking_rules=[]",
]


def _record(runs: Path, execution_id: str) -> dict:
    return json.loads((runs / execution_id / "execution.json").read_text())


def _only_run(runs: Path, exclude: set[str] = frozenset()) -> str:
    found = [p.name for p in runs.iterdir() if (p / "execution.json").is_file() and p.name not in exclude]
    assert len(found) == 1, found
    return found[0]


def _steps(record: dict) -> dict[str, dict]:
    return {step["StepName"]: step for step in record["Steps"]}


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    from pipeline.sample_data import write_digits

    root = tmp_path_factory.mktemp("local-run")
    digits, store, runs = root / "digits", root / "store", root / "runs"
    write_digits(digits, per_class=16)
    common = ["run-local", "--store", str(store), "--runs", str(runs), "--no-logs", "--cpus", "2"]

    # 1: nothing at the input URI yet -> split fails
    status = main([*common, *SETTINGS, "--param", f"InputDataUri={INPUT_URI}", "--param", "AccuracyThreshold=0.0"])
    first_id = _only_run(runs)
    first = _record(runs, first_id)

    # 2: place the data, resume the same execution
    Store(store).link(digits, INPUT_URI)
    resumed_status = main([*common, "--resume", first_id])
    resumed = _record(runs, first_id)

    # 3: a new execution whose threshold no model can reach
    gate_status = main(
        [*common, *SETTINGS, "--param", f"InputDataUri={INPUT_URI}", "--param", "AccuracyThreshold=1.01"]
    )
    gate_id = _only_run(runs, exclude={first_id})
    return {
        "store": Store(store),
        "runs": runs,
        "digits": digits,
        "first": (status, first),
        "resumed": (resumed_status, resumed),
        "gate": (gate_status, _record(runs, gate_id)),
    }


def test_a_failed_step_stops_the_execution_and_resume_finishes_it(local_run):
    status, first = local_run["first"]
    assert status == 1 and first["PipelineExecutionStatus"] == "Failed"
    steps = _steps(first)
    assert steps["split"]["StepStatus"] == "Failed"
    assert "nothing in the store" in steps["split"]["FailureReason"]
    assert steps["tune"]["StepStatus"] == "NotStarted"

    status, resumed = local_run["resumed"]
    assert status == 0, resumed.get("FailureReason")
    assert resumed["PipelineExecutionStatus"] == "Succeeded"
    assert resumed["PipelineExecutionId"] == first["PipelineExecutionId"] and len(resumed["Attempts"]) == 2


def test_every_step_ran_in_dependency_order(local_run):
    _, record = local_run["resumed"]
    steps = _steps(record)
    expected = {"split", "tune", "train", "debug", "evaluate", "quality_gate", "register-RegisterModel", "deploy",
                "endpoint_outcome"}
    ran = {name for name, step in steps.items() if step["StepStatus"] == "Succeeded" and step["StartTime"]}
    assert expected <= ran, expected - ran
    assert steps["quality_gate_failed"]["StepStatus"] == "Skipped"  # the branch not taken
    for step in steps.values():
        if not step["StartTime"]:
            continue
        for dependency in step["DependsOn"]:
            before = datetime.fromisoformat(steps[dependency]["EndTime"])
            assert before <= datetime.fromisoformat(step["StartTime"]), (
                f"{step['StepName']} started before {dependency}"
            )
    assert steps["train"]["DependsOn"] == ["split", "tune"]
    assert (local_run["runs"] / record["PipelineExecutionId"] / "summary.txt").is_file()


def test_best_trial_hyperparameters_reached_the_training_job(local_run):
    _, record = local_run["resumed"]
    steps = _steps(record)
    tune = steps["tune"]["Properties"]
    assert len(tune["TrainingJobSummaries"]) == 2
    best = tune["BestTrainingJob"]
    values = [s["FinalHyperParameterTuningJobObjectiveMetric"]["Value"] for s in tune["TrainingJobSummaries"]]
    assert best["FinalHyperParameterTuningJobObjectiveMetric"]["Value"] == max(values)
    train = steps["train"]["Properties"]
    for name, value in best["TunedHyperParameters"].items():
        assert train["HyperParameters"][name] == value
    log = (local_run["runs"] / record["PipelineExecutionId"] / steps["train"]["Jobs"][0]["Log"]).read_text()
    assert f"--lr {best['TunedHyperParameters']['lr']}" in log.splitlines()[0]
    # the final metric came from the job's log through the definition's regex
    final = {m["MetricName"]: m["Value"] for m in train["FinalMetricDataList"]}
    assert 0.0 <= final["validation:accuracy"] <= 1.0
    assert local_run["store"].exists(train["ModelArtifacts"]["S3ModelArtifacts"])


def test_registry_holds_the_approved_package_and_the_endpoint_answers(local_run):
    _, record = local_run["resumed"]
    steps = _steps(record)
    store = local_run["store"]
    package = ModelRegistry(store).latest("image-classification")
    assert package["ModelPackageArn"] == steps["register-RegisterModel"]["Properties"]["ModelPackageArn"]
    container = package["InferenceSpecification"]["Containers"][0]
    assert container["ModelDataUrl"] == steps["train"]["Properties"]["ModelArtifacts"]["S3ModelArtifacts"]
    assert package["ModelApprovalStatus"] == "Approved"
    evaluation = ModelRegistry(store).model_metrics(package)["ModelQuality.Statistics"]
    assert "accuracy" in evaluation["multiclass_classification_metrics"]
    assert steps["deploy"]["StepStatus"] == "Succeeded", steps["deploy"]["FailureReason"]
    assert steps["deploy"]["Properties"]["OutputParameters"]["status"] == "InService"
    # the callback step after deploy ends with the endpoint's outcome, as the deploy Lambda answers it in AWS
    assert steps["endpoint_outcome"]["Properties"]["OutputParameters"] == {"status": "InService", "reason": ""}
    resolved = resolve_model_package(store.root, package["ModelPackageArn"])
    image = sorted((local_run["digits"] / "3_three").iterdir())[0]
    log = local_run["runs"] / "test-endpoint.log"
    with start_in_background(resolved["model_path"], sha256=resolved["sha256"], log_path=log) as endpoint:
        response = httpx.post(
            f"{endpoint.url}/invocations",
            content=image.read_bytes(),
            headers={"Content-Type": "image/png", "Accept": "application/json"},
            timeout=60,
        )
    assert response.status_code == 200, response.text
    assert "3_three" in response.text or any(f"{d}_" in response.text for d in range(10))


def test_demo_serves_the_approved_package_and_records_its_answers(local_run):
    """``run-local --demo`` on the resumed execution: the newest Approved package answers every test image sent,
    ``endpoint.json`` records the answers and the report is written beside them."""
    from rich.console import Console

    from pipeline.local.demo import run_demo

    _, record = local_run["resumed"]
    run_dir = local_run["runs"] / record["PipelineExecutionId"]
    definition = json.loads((run_dir / "definition.json").read_text())
    console = Console(file=io.StringIO(), width=300)
    status = run_demo(record, definition, local_run["store"], run_dir, count=3, console=console)
    assert status == 0, console.file.getvalue()
    answers = json.loads((run_dir / "endpoint.json").read_text())
    labels = {path.name for path in local_run["digits"].iterdir()}
    assert [answer["status"] for answer in answers] == [200, 200, 200]
    assert all(answer["true_label"] in labels and answer["predicted"] in labels for answer in answers), answers
    assert f"report: {run_dir / 'report.html'}" in console.file.getvalue() and (run_dir / "report.html").is_file()


def test_threshold_above_one_takes_the_fail_step_with_the_measured_accuracy(local_run):
    status, record = local_run["gate"]
    assert status == 1 and record["PipelineExecutionStatus"] == "Failed"
    steps = _steps(record)
    for name in ("split", "tune", "train", "debug", "evaluate"):
        assert steps[name]["CacheHitResult"] is not None, f"{name} was not a cache hit"
    _, first = local_run["resumed"]
    assert steps["train"]["Properties"] == _steps(first)["train"]["Properties"]
    gate = steps["quality_gate"]
    assert gate["StepStatus"] == "Succeeded" and gate["Properties"]["Outcome"] == "False"
    fail = steps["quality_gate_failed"]
    assert fail["StepStatus"] == "Failed"
    outputs = steps["evaluate"]["Properties"]["ProcessingOutputConfig"]["Outputs"]
    evaluation = local_run["store"].read_json(outputs[0]["S3Output"]["S3Uri"] + "/evaluation.json")
    accuracy = evaluation["multiclass_classification_metrics"]["accuracy"]["value"]
    assert f"Quality gate failed: test accuracy {accuracy} (threshold 1.01); " in fail["FailureReason"]
    assert fail["FailureReason"].endswith(". See the evaluate and debug steps' reports.")
    assert record["FailureReason"] == f"Step quality_gate_failed: {fail['FailureReason']}"
    assert steps["register-RegisterModel"]["StepStatus"] == "Skipped"
