"""The fast paths chosen by default: autocast in training and serving (imgclf/precision.py), DataLoader workers."""

from __future__ import annotations

import io

import inference
import numpy as np
import pytest
import torch
from PIL import Image
from test_serving_model import held_out, model_archive

from imgclf import precision

CPU = torch.device("cpu")


@pytest.mark.parametrize("native, crop, expected", [
    (True, 224, torch.bfloat16),
    (True, precision.CPU_BF16_MIN_CROP, torch.bfloat16),
    (True, 28, None),  # small crops: the casts cost more than bf16 saves (precision.py docstring)
    (False, 224, None),  # emulated bf16 is slower than fp32
])
def test_training_auto_uses_cpu_bf16_only_where_it_pays(monkeypatch, native, crop, expected):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    assert precision.training_autocast("auto", CPU, crop) == expected


def test_training_true_and_false_override_auto(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert precision.training_autocast("true", CPU, 16) == torch.bfloat16
    assert precision.training_autocast("false", CPU, 224) is None
    with pytest.raises(ValueError, match="expected auto, true or false"):
        precision.training_autocast("fp16", CPU, 224)


def test_serving_env_forces_or_refuses(monkeypatch):
    module, example = torch.nn.Linear(4, 2).eval(), torch.zeros(2, 4)
    for value, expected in (("off", None), ("bfloat16", torch.bfloat16), ("float16", torch.float16)):
        monkeypatch.setenv(precision.SERVING_AUTOCAST_ENV, value)
        assert precision.pick_serving_autocast(module, example) == expected
    monkeypatch.setenv(precision.SERVING_AUTOCAST_ENV, "half-ish")
    with pytest.raises(ValueError, match="IMGCLF_AUTOCAST='half-ish'"):
        precision.pick_serving_autocast(module, example)


def test_serving_auto_stays_fp32_without_native_bf16(monkeypatch):
    monkeypatch.delenv(precision.SERVING_AUTOCAST_ENV, raising=False)
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert precision.pick_serving_autocast(torch.nn.Linear(4, 2).eval(), torch.zeros(2, 4)) is None


def test_serving_auto_takes_bf16_only_when_measured_faster(monkeypatch):
    monkeypatch.delenv(precision.SERVING_AUTOCAST_ENV, raising=False)
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    module, example = torch.nn.Linear(4, 2).eval(), torch.zeros(2, 4)
    timings = {None: 1.0, torch.bfloat16: 0.5}
    monkeypatch.setattr(precision, "forward_seconds", lambda m, x, dtype, repeats: timings[dtype])
    assert precision.pick_serving_autocast(module, example) == torch.bfloat16
    timings[torch.bfloat16] = 0.95  # faster, but within the noise margin SERVING_MIN_SPEEDUP
    assert precision.pick_serving_autocast(module, example) is None


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return buffer.getvalue()


def test_bf16_serving_agrees_with_fp32_on_real_digits(monkeypatch):
    """The reduced-precision path the endpoint may choose gives the same labels as fp32 on held-out digits."""
    monkeypatch.setenv(precision.SERVING_AUTOCAST_ENV, "off")
    fp32 = inference.model_fn(str(model_archive() / "model"))
    monkeypatch.setenv(precision.SERVING_AUTOCAST_ENV, "bfloat16")
    bf16 = inference.model_fn(str(model_archive() / "model"))
    assert fp32.autocast_dtype is None and bf16.autocast_dtype == torch.bfloat16
    batches = [inference.input_fn(png(image), "image/png") for image, _ in held_out(64)]
    batch = type(batches[0]).concat(batches)
    expected = inference.predict_fn(batch, fp32).probabilities
    reduced = inference.predict_fn(batch, bf16).probabilities
    assert reduced.dtype == torch.float32 and reduced.shape == expected.shape == (64, 10)
    assert torch.allclose(reduced.sum(dim=1), torch.ones(64), atol=1e-4)
    agreement = (reduced.argmax(dim=1) == expected.argmax(dim=1)).float().mean().item()
    assert agreement >= 0.95, f"bf16 and fp32 labels agree on only {agreement:.0%} of 64 digits"
    assert 0 < (reduced - expected).abs().max().item() < 0.1  # bf16 did run (rounding moved something)


@pytest.mark.parametrize("job_cpus, torch_threads, expected", [
    ("2", 1, 1),  # a core torch leaves idle decodes the next batch
    ("2", 2, 0),  # torch computes on every CPU: a worker would only steal cycles
    ("1", 1, 0),  # a parallel tuning trial's share in local mode
    ("16", 4, 4),  # capped at 4
    ("16", 16, 4),  # all CPUs to torch on a big host: a quarter of them
])
def test_cpu_workers_auto_uses_the_cpus_torch_leaves_idle(monkeypatch, job_cpus, torch_threads, expected):
    import train

    monkeypatch.setenv("SM_NUM_CPUS", job_cpus)
    monkeypatch.setattr(torch, "get_num_threads", lambda: torch_threads)
    assert train.worker_count("auto", CPU) == expected
    assert train.worker_count("3", CPU) == 3
