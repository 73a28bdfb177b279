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


def fake_timer(table: dict):
    """A StepTimer from ``{(dtype, images): seconds}``; records what was timed."""
    calls = []

    def seconds(dtype, images):
        calls.append((dtype, images))
        return table[(dtype, images)]
    return seconds, calls


@pytest.mark.parametrize("fp32, bf16, expected", [
    (1.0, 0.5, torch.bfloat16),  # clearly faster: taken
    (1.0, 0.95, None),  # faster, but within TRAINING_MIN_SPEEDUP: fp32
    (1.0, 1.6, None),  # slower (AVX512-BF16 without AMX at 96 px, issue 18): fp32
])
def test_training_auto_takes_bf16_only_when_a_timed_step_is_faster(fp32, bf16, expected):
    seconds, calls = fake_timer({(None, 64): fp32, (torch.bfloat16, 2): 0.05, (torch.bfloat16, 64): bf16})
    chosen, timings = precision.training_autocast("auto", CPU, 64, seconds)
    assert chosen == expected
    assert timings == {"float32": fp32, "bfloat16": bf16}
    assert calls == [(None, 64), (torch.bfloat16, 2), (torch.bfloat16, 64)]


def test_training_auto_refuses_emulated_bf16_from_two_images():
    """Two bf16 images as slow as a full fp32 batch (emulated bf16, an AVX2-only host: ~35x slower): no full bf16
    batch is timed, and fp32 is kept."""
    seconds, calls = fake_timer({(None, 64): 1.0, (torch.bfloat16, 2): 1.2})
    chosen, timings = precision.training_autocast("auto", CPU, 64, seconds)
    assert chosen is None and timings == {"float32": 1.0, "bfloat16 (2 images)": 1.2}
    assert (torch.bfloat16, 64) not in calls


def test_training_auto_refuses_a_cpu_candidate_that_scales_to_emulated_speed():
    """Two bf16 images faster than the fp32 batch, but 5.6x slower once scaled to 64 images (an AVX2-only EPYC
    measured bf16 18.8 s, fp32 3.4 s per step of 64): refused without the 19-second full bf16 step."""
    seconds, calls = fake_timer({(None, 64): 3.4, (torch.bfloat16, 2): 0.6})
    chosen, timings = precision.training_autocast("auto", CPU, 64, seconds)
    assert chosen is None and timings == {"float32": 3.4, "bfloat16 (2 images)": 0.6}
    assert (torch.bfloat16, 64) not in calls


def test_training_auto_decides_alike_in_every_ddp_process():
    """Timings are summed over processes (reduce) before the choice, so every rank picks the same dtype."""
    seconds, _ = fake_timer({(None, 8): 1.0, (torch.bfloat16, 2): 0.1, (torch.bfloat16, 8): 0.95})
    other_rank = {0: [0.2, 0.05], 1: [0.15]}  # the other process alone would take bf16 (0.2 / 0.15)
    calls = iter(range(2))

    def reduce(*values):
        return [v + o for v, o in zip(values, other_rank[next(calls)], strict=True)]

    chosen, timings = precision.training_autocast("auto", CPU, 8, seconds, reduce)
    assert timings == {"float32": 1.2, "bfloat16": pytest.approx(1.1)}
    assert chosen is None  # 1.2 / 1.1 < TRAINING_MIN_SPEEDUP: both processes keep fp32


def test_training_settings_that_need_no_probe():
    def never(dtype, images):
        raise AssertionError("no probe expected")
    assert precision.training_autocast("true", CPU, 16, never) == (torch.bfloat16, {})
    assert precision.training_autocast("false", CPU, 16, never) == (None, {})
    assert precision.training_autocast("float16", CPU, 16, never) == (torch.float16, {})
    assert precision.training_autocast(" BFloat16 ", CPU, 16, never) == (torch.bfloat16, {})
    with pytest.raises(ValueError, match="expected one of auto, true, false, bfloat16, float16"):
        precision.training_autocast("fp8", CPU, 224, never)


def test_serving_env_forces_or_refuses(monkeypatch):
    module, example = torch.nn.Linear(4, 2).eval(), torch.zeros(2, 4)
    for value, expected in (("off", None), ("bfloat16", torch.bfloat16), ("float16", torch.float16)):
        monkeypatch.setenv(precision.SERVING_AUTOCAST_ENV, value)
        assert precision.pick_serving_autocast(module, example) == expected
    monkeypatch.setenv(precision.SERVING_AUTOCAST_ENV, "half-ish")
    with pytest.raises(ValueError, match="IMGCLF_AUTOCAST='half-ish'"):
        precision.pick_serving_autocast(module, example)


def test_serving_auto_refuses_a_candidate_slower_on_two_images(monkeypatch, caplog):
    monkeypatch.delenv(precision.SERVING_AUTOCAST_ENV, raising=False)
    module, example = torch.nn.Linear(4, 2).eval(), torch.zeros(8, 4)
    monkeypatch.setattr(precision, "forward_seconds",
                        lambda m, x, dtype, repeats: 1.0 if dtype is None else 2.0 * len(x) / 2)
    with caplog.at_level("INFO", logger=precision.__name__):
        assert precision.pick_serving_autocast(module, example) is None
    assert "autocast off (timed forward of 8 images: float32 0.333 s, bfloat16 (2 images) 2.000 s)" in caplog.text


def test_serving_auto_takes_bf16_only_when_measured_faster(monkeypatch):
    monkeypatch.delenv(precision.SERVING_AUTOCAST_ENV, raising=False)
    module, example = torch.nn.Linear(4, 2).eval(), torch.zeros(4, 4)
    timings = {None: 1.0, torch.bfloat16: 0.5}  # per call of 4 images
    monkeypatch.setattr(precision, "forward_seconds",
                        lambda m, x, dtype, repeats: timings[dtype] * repeats * len(x) / 4)
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
