"""DebugSession: the default hook saves small, useful tensors; a managed hook config wins; no smdebug, no crash."""

from __future__ import annotations

import json
import sys

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from imgclf.debugger import hook as hook_module  # noqa: E402
from imgclf.debugger.hook import DebugSession, find_hook_config  # noqa: E402


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x):
        return self.fc(self.relu(self.conv(x)).flatten(1))


def run_steps(session, model, criterion, steps: int, eval_steps: int = 2) -> None:
    torch.manual_seed(0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    session.train_mode()
    for _ in range(steps):
        optimizer.zero_grad()
        criterion(model(torch.randn(4, 1, 8, 8)), torch.randint(0, 3, (4,))).backward()
        optimizer.step()
    session.eval_mode()
    with torch.no_grad():
        for _ in range(eval_steps):
            criterion(model(torch.randn(4, 1, 8, 8)), torch.randint(0, 3, (4,)))
    session.close()


@pytest.fixture(autouse=True)
def no_managed_config(monkeypatch, tmp_path):
    """Keep a real /opt/ml/input/config/debughookconfig.json (on a SageMaker host) out of these tests."""
    monkeypatch.setattr(hook_module, "DEFAULT_HOOK_CONFIG_PATH", str(tmp_path / "absent.json"))
    monkeypatch.delenv(hook_module.HOOK_CONFIG_ENV, raising=False)


def test_default_hook_saves_losses_every_step_and_reductions_sparsely(tmp_path):
    pytest.importorskip("smdebug")
    from smdebug.core.modes import ModeKeys
    from smdebug.trials import create_trial

    model, criterion = TinyNet(), nn.CrossEntropyLoss()
    session = DebugSession.create(str(tmp_path / "tensors"), model, criterion, save_interval=5)
    assert session.available and not session.managed and session.reason == ""
    run_steps(session, model, criterion, steps=23)
    session.close()  # idempotent
    trial = create_trial(str(tmp_path / "tensors"))
    loss = trial.tensor_names(collection="losses")
    assert loss == ["CrossEntropyLoss_output_0"]
    assert trial.tensor(loss[0]).steps(mode=ModeKeys.TRAIN) == list(range(23))
    assert trial.tensor(loss[0]).steps(mode=ModeKeys.EVAL) == [0, 1]
    gradient = "gradient/TinyNet_conv.weight"
    # the first 10 training steps densely (PoorWeightInitialization), then every save_interval
    assert trial.tensor(gradient).steps(mode=ModeKeys.TRAIN) == [*range(10), 10, 15, 20]
    assert trial.tensor("relu_input_0").steps(mode=ModeKeys.TRAIN) == [*range(10), 10, 15, 20]
    assert trial.tensor(gradient).reduction_value(0, "mean", abs=True, mode=ModeKeys.TRAIN) > 0
    # raw gradients only for the first and last layer; the others as reductions
    assert trial.tensor(gradient).value(0, mode=ModeKeys.TRAIN).shape == (4, 1, 3, 3)
    with pytest.raises(Exception, match="not available|not saved|Unavailable|unavailable"):
        trial.tensor("gradient/TinyNet_conv.bias").value(0, mode=ModeKeys.TRAIN)
    assert (tmp_path / "tensors" / "training_job_end.ts").exists()


def test_managed_hook_config_file_is_used_when_present(tmp_path, monkeypatch):
    pytest.importorskip("smdebug")
    managed_dir = tmp_path / "managed-tensors"
    config = tmp_path / "debughookconfig.json"
    config.write_text(json.dumps({
        "LocalPath": str(managed_dir),
        "HookParameters": {"save_interval": "1"},
        "CollectionConfigurations": [{"CollectionName": "losses"}],
    }))  # fmt: skip
    monkeypatch.setenv(hook_module.HOOK_CONFIG_ENV, str(config))
    assert find_hook_config() == config
    model, criterion = TinyNet(), nn.CrossEntropyLoss()
    session = DebugSession.create(str(tmp_path / "own-tensors"), model, criterion)
    assert session.available and session.managed and session.out_dir == str(managed_dir)
    run_steps(session, model, criterion, steps=3)
    assert any(managed_dir.rglob("*.tfevents")) and not (tmp_path / "own-tensors").exists()


def test_without_smdebug_training_goes_on_and_says_so_loudly(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "smdebug.pytorch", None)  # import fails as if smdebug were not installed
    model, criterion = TinyNet(), nn.CrossEntropyLoss()
    with caplog.at_level("ERROR", logger=hook_module.__name__):
        session = DebugSession.create(str(tmp_path / "tensors"), model, criterion)
    assert not session.available and "smdebug is not importable" in session.reason
    run_steps(session, model, criterion, steps=2)  # train_mode/eval_mode/close are no-ops
    # the job's log says so at ERROR, and the reason travels in output.tar.gz to the debug step
    assert any(r.levelname == "ERROR" and "hook NOT started" in r.getMessage() for r in caplog.records)
    marker = json.loads((tmp_path / "tensors" / hook_module.HOOK_FAILED_FILE).read_text())
    assert "smdebug is not importable" in marker["reason"]
    assert session.status() == {"hook": False, "managed": False, "out_dir": str(tmp_path / "tensors"),
                                "reason": session.reason}  # fmt: skip
    assert [p.name for p in (tmp_path / "tensors").iterdir()] == [hook_module.HOOK_FAILED_FILE]


def test_a_hook_that_starts_clears_an_earlier_failure(tmp_path, monkeypatch):
    pytest.importorskip("smdebug")
    tensors = tmp_path / "tensors"
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "smdebug.pytorch", None)
        DebugSession.create(str(tensors), TinyNet(), nn.CrossEntropyLoss())
    assert (tensors / hook_module.HOOK_FAILED_FILE).is_file()
    session = DebugSession.create(str(tensors), TinyNet(), nn.CrossEntropyLoss())  # the resumed job's hook
    assert session.available and not (tensors / hook_module.HOOK_FAILED_FILE).exists()
    session.close()


def test_bad_arguments_name_the_fix(tmp_path):
    with pytest.raises(ValueError, match="save_interval must be >= 1"):
        DebugSession.create(str(tmp_path), TinyNet(), nn.CrossEntropyLoss(), save_interval=0)
    with pytest.raises(FileNotFoundError, match="debughookconfig.json"):
        DebugSession.create(str(tmp_path), TinyNet(), nn.CrossEntropyLoss(), hook_config_path=str(tmp_path / "x.json"))
