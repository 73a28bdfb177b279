"""Reduced precision (``torch.autocast``) for training and serving: when it is used and with which dtype.

Why these rules (measured by ``make bench``, bench/results/latest.md, on this project's 2-core Xeon with AMX):
- CUDA: bf16 where the GPU supports it (Ampere and later: no loss scaling needed), else fp16 with a GradScaler
  (the ml.g4dn T4). This is PyTorch's documented mixed-precision recipe (torch.amp docs).
- CPU: autocast only pays off where the CPU runs bf16 matmuls and convolutions natively (AVX512-BF16 or AMX;
  oneDNN's bf16 kernels); without them bf16 is emulated and slower than fp32. Even with them, a ResNet18 training
  step at 28 px ran at 0.95x fp32 (the casts cost more than the small convolutions save), 1.58x at 48 px, 2.0x at
  96 px and 2.5x at 224 px: hence the :data:`CPU_BF16_MIN_CROP` threshold for training.
- Serving measures instead of assuming (like the memory format): fp32 vs autocast on a warm-up batch at load.
"""

from __future__ import annotations

import os
import time

import torch

#: Training crop size (pixels) from which CPU bf16 autocast is on under ``--amp auto`` (measured crossover: 28 px
#: 0.95x, 48 px 1.58x; see the module docstring).
CPU_BF16_MIN_CROP = 48

#: Serving takes autocast only when a warm-up forward pass is at least this much faster than fp32: reduced
#: precision moves probabilities by about 1e-3, so a marginal or noisy win is not worth it.
SERVING_MIN_SPEEDUP = 1.15

#: Environment switch for serving: ``auto`` (measure), ``off`` (fp32), ``bfloat16`` or ``float16`` (forced).
SERVING_AUTOCAST_ENV = "IMGCLF_AUTOCAST"

_DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def cpu_has_native_bf16() -> bool:
    """True when this CPU runs bf16 natively (AVX512-BF16 or AMX tiles), as torch's own CPU checks report."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def autocast_name(dtype: torch.dtype | None) -> str:
    """How logs name an autocast choice: ``bfloat16``, ``float16``, or ``off`` for fp32 (None)."""
    return str(dtype).removeprefix("torch.") if dtype is not None else "off"


def cuda_autocast_dtype() -> torch.dtype:
    """bf16 on GPUs that support it (no loss scaling), else fp16 (needs a GradScaler when training)."""
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def training_autocast(setting: str, device: torch.device, crop_size: int) -> torch.dtype | None:
    """The autocast dtype for ``train.py --amp`` (None: fp32).

    Args:
        setting: ``auto`` (CUDA: on; CPU: bf16 when :func:`cpu_has_native_bf16` and ``crop_size >=``
            :data:`CPU_BF16_MIN_CROP`), ``true`` (on: CUDA as auto, CPU bf16 even when emulated) or ``false``.
        device: the training device.
        crop_size: training crop in pixels.

    Raises:
        ValueError: any other setting.
    """
    setting = str(setting).strip().lower()
    if setting not in ("auto", "true", "false"):
        raise ValueError(f"--amp {setting!r}: expected auto, true or false")
    if setting == "false":
        return None
    if device.type == "cuda":
        return cuda_autocast_dtype()
    if setting == "true" or (cpu_has_native_bf16() and crop_size >= CPU_BF16_MIN_CROP):
        return torch.bfloat16
    return None


def forward_seconds(module: torch.nn.Module, batch: torch.Tensor, dtype: torch.dtype | None, repeats: int) -> float:
    """Seconds of ``repeats`` inference forward passes of ``batch`` (autocast to ``dtype`` unless None), after one
    untimed warm-up pass (which also warms the endpoint's first request); CUDA work is synchronized."""
    with torch.inference_mode(), torch.autocast(batch.device.type, dtype=dtype or torch.float32,
                                                 enabled=dtype is not None):
        module(batch)  # warm-up: oneDNN builds its kernels for this shape and dtype on the first call
        if batch.is_cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(repeats):
            module(batch)
        if batch.is_cuda:
            torch.cuda.synchronize()
    return time.perf_counter() - started


def pick_serving_autocast(module: torch.nn.Module, example: torch.Tensor, repeats: int = 3) -> torch.dtype | None:
    """The autocast dtype the endpoint's forward pass uses (None: fp32), chosen when the model loads.

    ``IMGCLF_AUTOCAST`` decides: ``off`` (also ``false``, ``0``, ``float32``) -> fp32; ``bfloat16`` or
    ``float16`` -> that dtype; ``auto`` (default) -> the candidate (CUDA: bf16 or fp16; CPU: bf16 only with native
    bf16, see :func:`cpu_has_native_bf16`) when ``example`` (already on the device, in the module's memory format)
    runs at least :data:`SERVING_MIN_SPEEDUP` times faster with it than in fp32, else fp32.

    Raises:
        ValueError: an unknown ``IMGCLF_AUTOCAST`` value.
    """
    setting = os.environ.get(SERVING_AUTOCAST_ENV, "auto").strip().lower()
    if setting in ("off", "false", "0", "float32", "fp32", "no"):
        return None
    if setting in _DTYPES:
        return _DTYPES[setting]
    if setting != "auto":
        raise ValueError(f"{SERVING_AUTOCAST_ENV}={setting!r}: expected auto, off, bfloat16 or float16")
    if example.is_cuda:
        candidate = cuda_autocast_dtype()
    elif cpu_has_native_bf16():
        candidate = torch.bfloat16
    else:
        return None
    fp32 = forward_seconds(module, example, None, repeats)
    reduced = forward_seconds(module, example, candidate, repeats)
    return candidate if reduced * SERVING_MIN_SPEEDUP <= fp32 else None
