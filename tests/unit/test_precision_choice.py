"""Reduced precision that AWS instances would get (issue 14, defects 0 and 5), checked without a GPU.

- Defect 5: the T4 (sm_75) emulates bf16; ``torch.cuda.is_bf16_supported()`` says True there, so the candidate must
  come from native support (``including_emulation=False``): fp16 with a GradScaler on the T4, bf16 from sm_80.
- Defect 0: under every precision ``train.py`` can pick, the Debugger hook saves its tensors (as float32) instead of
  crashing in smdebug's numpy conversion.
"""

from __future__ import annotations

import math
import re
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")

from imgclf import precision  # noqa: E402
from tests.conftest import run_script  # noqa: E402


@pytest.fixture
def fake_gpu(monkeypatch):
    """A CUDA device of the given compute capability, as torch.cuda.is_bf16_supported sees it; emulation 'works'."""
    def install(major: int, minor: int) -> None:
        monkeypatch.setattr(torch.version, "hip", None)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.cuda, "get_device_properties",
                            lambda device=None: SimpleNamespace(major=major, minor=minor))
        monkeypatch.setattr(torch.cuda, "_check_bf16_tensor_supported", lambda device: True, raising=False)
    return install


@pytest.mark.parametrize("capability, expected", [
    ((7, 5), torch.float16),  # T4 (ml.g4dn): bf16 only by emulation
    ((7, 0), torch.float16),  # V100 (ml.p3)
    ((8, 0), torch.bfloat16),  # A100 (ml.p4d)
    ((8, 6), torch.bfloat16),  # A10G (ml.g5)
    ((9, 0), torch.bfloat16),  # H100 (ml.p5)
])
def test_cuda_candidate_follows_native_bf16(fake_gpu, capability, expected):
    fake_gpu(*capability)
    assert torch.cuda.is_bf16_supported()  # the default call says True even on the T4: the defect
    assert precision.cuda_autocast_dtype() == expected
    assert precision.candidate_dtype(torch.device("cuda", 0)) == expected
    seconds = {(None, 32): 1.0, (expected, 2): 0.5, (expected, 32): 0.5}
    chosen, timings = precision.training_autocast("auto", torch.device("cuda", 0), 32,
                                                   lambda dtype, images: seconds[(dtype, images)])
    assert chosen == expected and set(timings) == {"float32", precision.autocast_name(expected)}


@pytest.mark.parametrize("amp", ["false", "bfloat16", "float16", "auto"])
def test_hook_saves_float32_tensors_under_every_precision(digits_split, tmp_path, amp):
    """One training step with the Debugger hook on under fp32, bf16 and fp16 autocast: training succeeds and the
    saved ReLU-input variances (computed from bf16/fp16 activations under autocast) are finite float32 values.
    ``auto`` (the default) times fp32 against bf16 at start-up and logs its choice with both timings."""
    from smdebug.trials import create_trial

    result = run_script(
        "train.py", "--train-dir", str(digits_split / "train"), "--validation-dir", str(digits_split / "validation"),
        "--model-dir", str(tmp_path / "model"), "--output-data-dir", str(tmp_path / "output"),
        "--checkpoint-dir", str(tmp_path / "checkpoints"), "--image-size", "16", "--batch-size", "8",
        "--epochs", "1", "--max-steps-per-epoch", "1", "--amp", amp, "--workers", "0", "--debugger", "true",
        env={"SMDEBUG_LOG_LEVEL": "error"})
    if amp == "auto":
        choice = re.search(r"--amp auto: autocast (\w+) \(timed forward\+backward of 16-px images, batch 8: "
                           r"float32 [0-9.]+ s, bfloat16( \(2 images\))? [0-9.]+ s\)", result.stdout)
        assert choice, result.stdout
        assert f"amp={choice.group(1)}" in result.stdout
    else:
        assert f"amp={'off' if amp == 'false' else amp}" in result.stdout
    assert "smdebug hook off" not in result.stderr
    trial = create_trial(str(tmp_path / "output" / "tensors"))
    names = trial.tensor_names(collection="relu_input")
    assert names, "no ReLU inputs saved"
    value = trial.tensor(names[0]).reduction_value(0, "variance")
    assert value.dtype.name == "float32" and math.isfinite(float(value))


def test_training_probe_leaves_the_model_and_the_random_stream_alone():
    """The start-up probe trains a copy: weights, batch-norm statistics, gradients and torch's global RNG (which
    drives augmentations) are as before, so ``--amp auto`` changes no training result but the dtype."""
    from imgclf import models

    torch.manual_seed(0)
    model = models.build_model("resnet18", 10)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    rng = torch.get_rng_state()
    timer = precision.train_step_timer(model, torch.nn.CrossEntropyLoss(), (3, 16, 16), 10, torch.device("cpu"))
    chosen, timings = precision.training_autocast("auto", torch.device("cpu"), 4, timer)
    assert timings["float32"] > 0 and len(timings) == 2
    assert torch.equal(rng, torch.get_rng_state())
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())
    assert all(parameter.grad is None for parameter in model.parameters())
