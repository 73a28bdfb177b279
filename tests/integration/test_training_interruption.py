"""Training survives a kill: SIGKILL or SIGTERM mid-epoch, then the next run resumes from the last checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.conftest import ENTRYPOINTS, run_script


def job_args(split_dir, job_dir, epochs=3):
    return ["--train-dir", str(split_dir / "train"), "--validation-dir", str(split_dir / "validation"),
            "--model-dir", str(job_dir / "model"), "--output-data-dir", str(job_dir / "output"),
            "--checkpoint-dir", str(job_dir / "checkpoints"), "--image-size", "16", "--batch-size", "16",
            "--epochs", str(epochs), "--augment", "light", "--debugger", "false", "--threads", "1",
            "--workers", "0"]


def kill_during_second_epoch(args, sig) -> str:
    """Start train.py, wait for epoch 1's metric line, let epoch 2 begin, then send ``sig``. Returns stdout."""
    process = subprocess.Popen([sys.executable, str(ENTRYPOINTS / "train.py"), *args], cwd=ENTRYPOINTS,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines = []
    deadline = time.monotonic() + 300
    for line in process.stdout:
        lines.append(line)
        if line.startswith("epoch=1 "):
            time.sleep(0.3)  # inside epoch 2 (an epoch here takes several seconds)
            process.send_signal(sig)
            break
        assert time.monotonic() < deadline, "epoch 1 never finished"
    lines.extend(process.stdout)
    process.wait(timeout=60)
    assert process.returncode != 0, "the job was meant to die"
    output = "".join(lines)
    assert "epoch=2 " not in output, "epoch 2 finished before the kill: make epochs longer"
    return output


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM-spot-reclaim"])
def test_killed_job_resumes_and_matches_an_uninterrupted_run(sig, digits_split, tmp_path):
    interrupted, reference = tmp_path / "interrupted", tmp_path / "reference"
    kill_during_second_epoch(job_args(digits_split, interrupted), sig)
    checkpoint = torch.load(interrupted / "checkpoints" / "checkpoint.pth", weights_only=True)
    assert checkpoint["epoch"] == 1
    assert not list((interrupted / "checkpoints").glob("*.tmp"))

    resumed = run_script("train.py", *job_args(digits_split, interrupted))
    assert "resumed from checkpoint after epoch 1" in resumed.stdout
    assert [line.split()[0] for line in resumed.stdout.splitlines() if line.startswith("epoch=")] == \
        ["epoch=2", "epoch=3"]
    history = json.loads((interrupted / "output" / "history.json").read_text())
    assert [record["epoch"] for record in history["epochs"]] == [1, 2, 3]

    # Model, optimizer, schedule and RNG states all came back: the result equals a run never interrupted.
    run_script("train.py", *job_args(digits_split, reference))
    resumed_state = torch.load(interrupted / "model" / "model.pth", weights_only=True)
    reference_state = torch.load(reference / "model" / "model.pth", weights_only=True)
    for key, value in reference_state.items():
        torch.testing.assert_close(resumed_state[key], value, msg=f"{key} differs after resume")


def test_a_failed_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    from imgclf import checkpoint as ckpt

    ckpt.save_checkpoint(tmp_path, {"epoch": 1, "weights": torch.ones(3)})

    def crash_midway(obj, handle, *args, **kwargs):
        handle.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", crash_midway)
    with pytest.raises(OSError):
        ckpt.save_checkpoint(tmp_path, {"epoch": 2, "weights": torch.zeros(3)})
    monkeypatch.undo()
    state = ckpt.load_checkpoint(tmp_path)
    assert state["epoch"] == 1 and torch.equal(state["weights"], torch.ones(3))


def test_checkpoint_refuses_to_unpickle_code(tmp_path):
    """A planted checkpoint holding a pickled callable is refused (weights_only=True), never executed."""
    import pickle

    from imgclf import checkpoint as ckpt

    class Exploit:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    with open(tmp_path / ckpt.CHECKPOINT_FILE, "wb") as handle:
        pickle.dump({"epoch": 1, "x": Exploit()}, handle)
    with pytest.raises(pickle.UnpicklingError):
        ckpt.load_checkpoint(tmp_path)
    assert not (tmp_path / "pwned").exists()
