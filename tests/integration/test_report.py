"""report.html: every section renders from a run folder shaped like a local execution's; gaps say why."""

from __future__ import annotations

import html
import json
import re
import tarfile
from html.parser import HTMLParser

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from imgclf.debugger.hook import DebugSession  # noqa: E402
from imgclf.debugger.profiler import SystemMonitor  # noqa: E402
from imgclf.debugger.runner import evaluate_training_output  # noqa: E402
from pipeline.local.report import write_report  # noqa: E402

BUCKET = "local-bucket"
JOB = "pipe-train-abc123"
SECTIONS = ("Steps", "Data", "Tuning trials", "Training", "Debugger and profiler rules", "Utilization", "Evaluation",
            "Model package and endpoint")  # fmt: skip


def train_output(folder):
    """A real (tiny) training output: smdebug tensors, profiler samples and history.json."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 3))
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    session = DebugSession.create(str(folder / "tensors"), model, criterion, save_interval=5)
    epochs = []
    x, y = torch.randn(96, 1, 8, 8), torch.randint(0, 3, (96,))
    with SystemMonitor(str(folder / "profiler"), interval_s=0.05) as monitor:
        for epoch in range(1, 4):
            session.train_mode()
            for start in range(0, 64, 16):
                optimizer.zero_grad()
                loss = criterion(model(x[start : start + 16]), y[start : start + 16])
                loss.backward()
                optimizer.step()
                monitor.record_step(0.001, 0.004)
            session.eval_mode()
            with torch.no_grad():
                validation = criterion(model(x[64:]), y[64:]).item()
            epochs.append({"epoch": epoch, "train_loss": loss.item(), "train_accuracy": 0.3 + 0.1 * epoch,
                           "validation_loss": validation, "validation_accuracy": 0.25 + 0.1 * epoch, "lr": 0.1,
                           "epoch_seconds": 0.2})  # fmt: skip
    session.close()
    (folder / "history.json").write_text(json.dumps({"epochs": epochs, "hyperparameters": {"lr": 0.1, "epochs": 3}}))


def write_json(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))


def build_run(tmp_path) -> tuple:
    store = tmp_path / "store"
    run_dir = tmp_path / "runs" / "exec-1"
    output = tmp_path / "output"
    output.mkdir()
    train_output(output)
    tarball = store / BUCKET / "pipe/models" / JOB / "output" / "output.tar.gz"
    tarball.parent.mkdir(parents=True)
    with tarfile.open(tarball, "w:gz") as archive:
        for name in ("tensors", "profiler", "history.json"):
            archive.add(output / name, arcname=name)
    debug = evaluate_training_output(tarball, {"CPUBottleneck": {"patience": 2}})
    write_json(store / BUCKET / "pipe/debug/debug.json", debug)
    labels = ["0", "1", "2"]
    write_json(store / BUCKET / "pipe/evaluation/evaluation.json", {
        "multiclass_classification_metrics": {"accuracy": {"value": 0.9, "standard_deviation": 0.03},
                                              "macro_f1": {"value": 0.89, "standard_deviation": 0.03}},
        "per_class": {label: {"precision": 0.9, "recall": 0.88, "f1": 0.89, "support": 30} for label in labels},
        "confusion_matrix": {"labels": labels, "matrix": [[27, 2, 1], [1, 28, 1], [2, 2, 26]]},
    })  # fmt: skip

    def outputs(*pairs):
        return {"ProcessingOutputConfig": {"Outputs": [{"OutputName": n, "S3Output": {"S3Uri": f"s3://{BUCKET}/{k}"}}
                                                       for n, k in pairs]}}  # fmt: skip

    write_json(store / BUCKET / "pipe/split/manifest/manifest.json", {
        "classes": labels, "counts": {label: {"train": 24, "validation": 3, "test": 3} for label in labels},
        "totals": {"train": 72, "validation": 9, "test": 9}, "rejected": 1, "ignored": [], "empty_classes": [],
        "warnings": []})  # fmt: skip
    write_json(store / BUCKET / "pipe/split/manifest/rejected.json",
               [{"path": "2/broken.png", "reason": "not an image PIL can read (unknown or corrupt format)"}])
    tried = [(0.01, 32, 0.81), (0.051392370149008416, 64, 0.93), (0.3, 32, 0.62)]
    trials = [{"JobName": f"tune-{i:03d}", "JobType": "TrainingJob", "Status": "Completed",
               "TunedHyperParameters": {"lr": str(lr), "batch-size": str(bs)}, "ObjectiveValue": objective}
              for i, (lr, bs, objective) in enumerate(tried)]  # fmt: skip
    package_arn = "arn:aws:sagemaker:us-east-1:000000000000:model-package/digits/1"
    container = {"Image": "pytorch-inference:2.3", "ModelDataUrl": "s3://b/model.tar.gz"}
    steps = [
        ("Split", "Processing", [], outputs(("train", "pipe/split/train"), ("test", "pipe/split/test"),
                                            ("manifest", "pipe/split/manifest"))),
        ("Tune", "Tuning", ["Split"], {"BestTrainingJob": {"TrainingJobName": "tune-001"}}),
        ("Train", "Training", ["Tune"], {"TrainingJobName": JOB,
                                         "ModelArtifacts": {"S3ModelArtifacts": f"s3://{BUCKET}/pipe/models/{JOB}/output/model.tar.gz"},
                                         "OutputDataConfig": {"S3OutputPath": f"s3://{BUCKET}/pipe/models"}}),
        ("Debug", "Processing", ["Train"], outputs(("debug", "pipe/debug"))),
        ("Evaluate", "Processing", ["Train"], outputs(("evaluation", "pipe/evaluation"))),
        ("Gate", "Condition", ["Debug", "Evaluate"], {"Outcome": "True"}),
        ("Register", "RegisterModel", ["Gate"], {"ModelPackageArn": package_arn, "ModelPackageGroupName": "digits",
                                                 "ModelPackageVersion": 1, "ModelApprovalStatus": "Approved",
                                                 "CreationTime": 1764064800.25,
                                                 "InferenceSpecification": {"Containers": [container]}}),
        ("Deploy", "Lambda", ["Register"], {"OutputParameters": {"endpoint_name": "digits", "status": "InService",
                                                                 "endpoint_url": "http://127.0.0.1:9"},
                                            "ServeCommand": "python -m pipeline serve --model latest"}),
    ]  # fmt: skip
    record = {
        "PipelineName": "digits-pipeline", "PipelineExecutionId": "exec-1", "PipelineExecutionStatus": "Succeeded",
        "CreationTime": "2026-11-25T10:00:00.000+00:00", "EndTime": "2026-11-25T10:05:00.000+00:00",
        "Parameters": {"TrainInstanceType": "ml.m5.xlarge", "AccuracyThreshold": 0.85}, "Store": str(store),
        "Steps": [{"StepName": name, "StepType": kind, "DependsOn": deps, "StepStatus": "Succeeded",
                   "DurationSeconds": 12.5, "Properties": properties, "Detail": "",
                   "Jobs": trials if kind == "Tuning" else [], "Branch": None}
                  for name, kind, deps, properties in steps],
    }  # fmt: skip
    write_json(run_dir / "execution.json", record)

    def json_get(step, file, path):
        return {"Std:JsonGet": {"Path": path, "PropertyFile": {"Get": f"Steps.{step}.PropertyFiles.{file}"}}}

    # the quality gate as steps/gate.py writes it (the report evaluates its operands to show the comparison)
    write_json(run_dir / "definition.json", {"Steps": [
        {"Name": "Debug", "Type": "Processing",
         "PropertyFiles": [{"FilePath": "debug.json", "OutputName": "debug", "PropertyFileName": "DebugReport"}]},
        {"Name": "Evaluate", "Type": "Processing",
         "PropertyFiles": [{"FilePath": "evaluation.json", "OutputName": "evaluation",
                            "PropertyFileName": "EvaluationReport"}]},
        {"Name": "Gate", "Type": "Condition", "Arguments": {"Conditions": [
            {"Type": "GreaterThanOrEqualTo", "RightValue": {"Get": "Parameters.AccuracyThreshold"},
             "LeftValue": json_get("Evaluate", "EvaluationReport", "multiclass_classification_metrics.accuracy.value")},
            {"Type": "Equals", "RightValue": 0,
             "LeftValue": json_get("Debug", "DebugReport", "summary.blocking_issues_found")}],
            "IfSteps": [], "ElseSteps": []}}]})  # fmt: skip
    write_json(run_dir / "endpoint.json", [{"image": "test/3/a.png", "true_label": "3", "predicted": "3",
                                            "probability": 0.97, "status": 200}])  # fmt: skip
    return run_dir, debug


class Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.sections, self.unclosed = [], [], []

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "img":
            self.images.append(attributes.get("src", ""))
        if tag == "section":
            self.sections.append(attributes.get("id"))


def test_report_renders_every_section_self_contained(tmp_path):
    run_dir, debug = build_run(tmp_path)
    path = write_report(run_dir)
    assert path == run_dir / "report.html"
    page = path.read_text()
    parser = Collector()
    parser.feed(page)
    assert parser.sections == [s.lower().replace(" ", "-") for s in SECTIONS]
    assert "not available" not in page, re.findall(r"class='na'>([^<]*)", page)
    # plots: step graph, tuning, training, utilization, confusion matrix; all embedded, nothing fetched
    assert len(parser.images) == 5 and all(src.startswith("data:image/png;base64,") for src in parser.images)
    assert not re.search(r"(src|href)=['\"]https?://", page)
    for name, result in debug["rules"].items():
        assert re.search(rf"{name}.*?{result['status']}", page, re.S), name
    assert "tune-001 &#9733; best" in page  # the trial with the highest objective
    assert "1/1 correct" in page and "model-package/digits/1" in page and "InService" in page


def test_report_explains_steps_gate_data_and_verdicts(tmp_path):
    """Each step says what it produced; the gate shows its comparisons; the data section lists counts and rejects;
    each rule says why and whether it blocks; times and hyperparameters read as people write them; the deploy's
    InService sits beside the endpoint's state now."""
    run_dir, debug = build_run(tmp_path)
    page = write_report(run_dir).read_text()
    cells = {row[0]: row for row in re.findall(r"<tr><td>([^<]*)</td><td>[^<]*</td><td>.*?</td><td>[^<]*</td>"
                                                r"<td>[^<]*</td><td>([^<]*)</td></tr>", page)}  # fmt: skip
    details = {name: detail for name, detail in cells.values()}
    assert details["Split"] == "90 images of 3 classes: train 72, validation 9, test 9; rejected 1"
    assert details["Tune"] == "3 trials (3 completed); best tune-001: objective 0.9300"
    assert details["Train"].startswith("3 epochs; last: validation accuracy 0.5500")
    assert details["Evaluate"].startswith("test accuracy 0.9000")
    assert details["Debug"].startswith("issues found: ")
    blocking = debug["summary"]["blocking_issues_found"]
    assert details["Gate"] == (f"accuracy 0.9000 &gt;= AccuracyThreshold 0.8500: True; blocking_issues_found "
                               f"{blocking} == 0: {blocking == 0} (outcome True)")
    assert "<td>2/broken.png</td><td>not an image PIL can read (unknown or corrupt format)</td>" in page
    assert "<tr><td>1</td><td>24</td><td>3</td><td>3</td><td>30</td></tr>" in page  # class 1: train, val, test
    assert "2025-11-25 10:00:00 UTC" in page and "1764064800" not in page
    assert "<td>0.05139</td>" in page and "0.051392370149008416" not in page
    assert "stopped: http://127.0.0.1:9 does not answer /ping" in page
    for name, result in debug["rules"].items():
        row = re.search(rf"<tr><td>{name}</td><td>.*?</td><td>(.*?)</td><td>(.*?)</td>", page)
        assert row, name
        why, blocks = row.groups()
        assert blocks.startswith("<b>yes</b>" if result["blocking"] and result["status"] == "IssuesFound" else
                                 "yes" if result["blocking"] else "no"), (name, blocks)
        if result["status"] in ("IssuesFound", "NoIssuesFound"):  # the value judged and its limit
            assert len(re.findall(r"\d+(?:\.\d+)?", why)) >= 2, (name, why)
        else:  # NotApplicable, Skipped: the reason
            assert why == html.escape(result["evidence"]["reason"]), (name, why)


def test_report_says_why_a_section_is_missing(tmp_path):
    run_dir = tmp_path / "runs" / "exec-2"
    write_json(run_dir / "execution.json", {
        "PipelineName": "p", "PipelineExecutionId": "exec-2", "PipelineExecutionStatus": "Failed",
        "FailureReason": "step Train failed", "Store": str(tmp_path / "store"),
        "Steps": [{"StepName": "Train", "StepType": "Training", "DependsOn": [], "StepStatus": "Failed",
                   "DurationSeconds": 3.0, "Properties": {}, "FailureReason": "AlgorithmError: boom"}],
    })  # fmt: skip
    (tmp_path / "store").mkdir()
    page = write_report(run_dir).read_text()
    assert "AlgorithmError: boom" in page and "step Train failed" in page
    assert "tuning trials: not available &mdash; this execution has no tuning step" in page
    assert "training: not available &mdash; no training step with properties" in page
    assert "no debug.json in any finished processing step" in page
    with pytest.raises(FileNotFoundError, match="execution.json"):
        write_report(tmp_path / "nowhere")


def test_report_of_cache_hits_points_at_the_source_execution(tmp_path):
    """A cache hit records no jobs of its own: the tune row is not "0 trials", the tuning section names the
    execution that holds the trials, and the graph's boxes say "cached" rather than a duration of 0 s."""
    from pipeline.local.report.plots import step_label

    run_dir, _ = build_run(tmp_path)
    record = json.loads((run_dir / "execution.json").read_text())
    source = {"SourcePipelineExecutionArn": "arn:aws:sagemaker:us-east-1:000000000000:pipeline/p/execution/exec-0"}
    for step in record["Steps"]:
        if step["StepName"] in ("Split", "Tune"):
            step.update(CacheHitResult=source, DurationSeconds=0.0, Detail="cache hit from execution exec-0")
            step["Jobs"] = []
    write_json(run_dir / "execution.json", record)
    page = write_report(run_dir).read_text()
    assert "<td>Tune</td><td>Tuning</td>" in page and "0 trials" not in page
    assert "<td>cache hit from execution exec-0</td>" in page
    assert "tuning step Tune was a cache hit (from exec-0): its trials are in that execution&#x27;s report" in page
    assert step_label(record["Steps"][1]) == "Tune\nSucceeded (cached)"
    assert step_label(record["Steps"][2]) == "Train\nSucceeded 12s"
    assert step_label({**record["Steps"][2], "DurationSeconds": 0.25}) == "Train\nSucceeded 0.2s"
