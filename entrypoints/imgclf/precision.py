"""Reduced precision (``torch.autocast``) for training and serving: when it is used and with which dtype.

Measured, not assumed. Whether reduced precision pays off depends on the machine and the input size: bf16 needs
native CPU instructions (AVX512-BF16 or AMX, oneDNN's bf16 kernels) and is emulated, far slower than fp32, without
them; even with AVX512-BF16 but no AMX, bf16 can train slower than fp32, and with AMX small inputs gain nothing
while large ones gain much. So ``--amp auto`` and the endpoint time the candidate against fp32 on the actual model
and input size at start-up, and keep fp32 unless the candidate is clearly faster.

Candidates: CUDA -> bf16 where the GPU runs it natively (compute capability >= 8.0, Ampere and later: no loss
scaling), else fp16 with a GradScaler (the ml.g4dn T4, sm_75: ``torch.cuda.is_bf16_supported()`` says True there by
emulation, and cuDNN has no bf16 convolutions below sm_80); CPU -> bf16. This is PyTorch's documented
mixed-precision recipe (torch.amp docs).
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Callable

import torch

#: ``train.py --amp`` values: ``auto`` (timed probe), ``true`` (the candidate without a probe), ``false`` (fp32),
#: or a dtype forced by name.
AMP_SETTINGS = ("auto", "true", "false", "bfloat16", "float16")

#: ``--amp auto`` takes the candidate only when a training step is at least this much faster than fp32: a step
#: timed twice on a busy 2-core host varied by a few percent, and a tie is not worth the lower precision.
TRAINING_MIN_SPEEDUP = 1.1

#: Images of the candidate's first, cheap timing. Two, not one: a training-mode BatchNorm over a 1x1 feature map
#: (resnet18's last block at 28 px) refuses a batch of one.
PROBE_FEW_IMAGES = 2

#: A CPU candidate whose first timing, scaled to the full batch, is this many times the fp32 batch is emulated:
#: refused without timing its full batch. Emulated bf16 (no AVX512-BF16 or AMX) takes several times fp32's time,
#: native bf16 at its worst about fp32's; scaling two images up overstates a CPU step only by the per-layer
#: overhead, so this factor separates the two with room on both sides.
EMULATED_SLOWDOWN = 2.0

#: Serving takes autocast only when a warm-up forward pass is at least this much faster than fp32: reduced
#: precision moves probabilities by about 1e-3, so a marginal or noisy win is not worth it.
SERVING_MIN_SPEEDUP = 1.15

#: Environment switch for serving: ``auto`` (measure), ``off`` (fp32), ``bfloat16`` or ``float16`` (forced).
SERVING_AUTOCAST_ENV = "IMGCLF_AUTOCAST"

_DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}

log = logging.getLogger(__name__)


def cpu_has_native_bf16() -> bool:
    """True when this CPU runs bf16 natively (AVX512-BF16 or AMX tiles), as torch's own CPU checks report."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def autocast_name(dtype: torch.dtype | None) -> str:
    """How logs name an autocast choice: ``bfloat16``, ``float16``, or ``off`` for fp32 (None)."""
    return str(dtype).removeprefix("torch.") if dtype is not None else "off"


def cuda_native_bf16() -> bool:
    """True when the current CUDA device runs bf16 natively (compute capability >= 8.0, or ROCm).

    ``torch.cuda.is_bf16_supported(including_emulation=False)``: the default (``including_emulation=True``) also
    says True on the T4 (sm_75), where bf16 is emulated.
    """
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # a torch without the argument: its check is the capability
        return torch.cuda.is_available() and torch.cuda.get_device_properties(torch.cuda.current_device()).major >= 8


def cuda_autocast_dtype() -> torch.dtype:
    """bf16 on GPUs that run it natively (no loss scaling), else fp16 (needs a GradScaler when training)."""
    return torch.bfloat16 if cuda_native_bf16() else torch.float16


def candidate_dtype(device: torch.device) -> torch.dtype:
    """The reduced-precision dtype worth trying on ``device``: CUDA :func:`cuda_autocast_dtype`, CPU bf16."""
    return cuda_autocast_dtype() if device.type == "cuda" else torch.bfloat16


#: Sums timings over DDP processes (:meth:`train.Distributed.all_sum`); the identity without DDP.
Reducer = Callable[..., list[float]]


def _identity(*values: float) -> list[float]:
    return list(values)


#: ``seconds(dtype, images)``: time of one step of ``images`` images under autocast ``dtype`` (None: fp32).
StepTimer = Callable[[torch.dtype | None, int], float]


def choose_autocast(candidate: torch.dtype, batch_size: int, seconds: StepTimer, min_speedup: float,
                    reduce: Reducer = _identity, device_type: str = "cpu") -> tuple[torch.dtype | None, dict]:
    """Time fp32 against ``candidate`` and return ``(chosen dtype or None for fp32, timings)``.

    fp32 runs a full batch of ``batch_size`` first; then the candidate runs :data:`PROBE_FEW_IMAGES` images: a step
    never gets faster with more images, so when those already take as long as the full fp32 batch, or (on a CPU,
    ``device_type`` ``cpu``) when scaled to the full batch they take :data:`EMULATED_SLOWDOWN` times as long
    (emulated bf16), the candidate is refused without timing its full batch. Otherwise the candidate's full batch
    is timed and taken when ``fp32 >= min_speedup * candidate``. ``reduce`` sums timings over DDP processes, so
    that every process decides alike. ``timings``: ``{"float32": s, "<candidate>": s}`` (``"<candidate> (2
    images)"`` on an early refusal).
    """
    name = autocast_name(candidate)
    few = min(PROBE_FEW_IMAGES, batch_size)
    fp32, small = reduce(seconds(None, batch_size), seconds(candidate, few))
    # A step never gets faster with more images (any device); on a CPU a step's time also grows about in
    # proportion to its images, so a candidate whose few images, scaled to the batch, take EMULATED_SLOWDOWN
    # times the fp32 batch is emulated. On a GPU a small batch costs about as much as a full one: no scaling there.
    scaled = small * batch_size / few if device_type == "cpu" else small
    if small >= fp32 or scaled >= EMULATED_SLOWDOWN * fp32:
        return None, {"float32": fp32, f"{name} ({few} images)": small}
    (reduced,) = reduce(seconds(candidate, batch_size))
    timings = {"float32": fp32, name: reduced}
    return (candidate if reduced * min_speedup <= fp32 else None), timings


def describe_choice(chosen: torch.dtype | None, timings: dict, what: str) -> str:
    """One log line: ``autocast bfloat16 (timed ...: float32 0.512 s, bfloat16 0.301 s)``."""
    measured = ", ".join(f"{name} {value:.3f} s" for name, value in timings.items())
    return f"autocast {autocast_name(chosen)}" + (f" (timed {what}: {measured})" if timings else "")


def training_autocast(setting: str, device: torch.device, batch_size: int, seconds: StepTimer,
                      reduce: Reducer = _identity) -> tuple[torch.dtype | None, dict]:
    """The autocast dtype for ``train.py --amp`` (None: fp32) and the probe's timings (empty without a probe).

    Args:
        setting: ``auto`` (:func:`choose_autocast` between fp32 and :func:`candidate_dtype`, with
            :data:`TRAINING_MIN_SPEEDUP`), ``true`` (the candidate, not timed), ``false`` (fp32), ``bfloat16`` or
            ``float16`` (forced).
        device: the training device.
        batch_size: images per training step (the probe's full batch).
        seconds: times one forward and backward pass (see :func:`train_step_timer`).
        reduce: sums timings over DDP processes (identity without DDP).

    Raises:
        ValueError: any other setting.
    """
    setting = str(setting).strip().lower()
    if setting not in AMP_SETTINGS:
        raise ValueError(f"--amp {setting!r}: expected one of {', '.join(AMP_SETTINGS)}")
    if setting == "false":
        return None, {}
    if setting in _DTYPES:
        return _DTYPES[setting], {}
    if setting == "true":
        return candidate_dtype(device), {}
    return choose_autocast(candidate_dtype(device), batch_size, seconds, TRAINING_MIN_SPEEDUP, reduce, device.type)


def train_step_timer(model: torch.nn.Module, criterion: torch.nn.Module, image_shape: tuple[int, int, int],
                     num_classes: int, device: torch.device,
                     memory_format: torch.memory_format = torch.contiguous_format) -> StepTimer:
    """A :data:`StepTimer` for training: one forward and backward pass of random images of ``image_shape``
    ``(C, H, W)`` through a copy of ``model`` (the model itself, its batch-norm statistics and gradients are left
    alone), after one untimed warm-up pass per (dtype, images) (oneDNN and cuDNN build kernels on first use)."""
    copies: list[torch.nn.Module] = []  # made on the first timing: settings that need no probe copy nothing

    def run(dtype: torch.dtype | None, images: torch.Tensor, targets: torch.Tensor) -> None:
        if not copies:
            copies.append(copy.deepcopy(model).train())
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = criterion(copies[0](images), targets)
        loss.backward()
        copies[0].zero_grad(set_to_none=True)

    def seconds(dtype: torch.dtype | None, count: int) -> float:
        # Its own generator: the probe must not shift the training's random stream (augmentations, shuffling).
        generator = torch.Generator(device=device).manual_seed(0)
        images = torch.randn(count, *image_shape, device=device, generator=generator)
        images = images.contiguous(memory_format=memory_format)
        targets = torch.randint(0, num_classes, (count,), device=device, generator=generator)
        run(dtype, images, targets)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        run(dtype, images, targets)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - started

    return seconds


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
    ``float16`` -> that dtype; ``auto`` (default) -> :func:`choose_autocast` between fp32 and the candidate
    (:func:`candidate_dtype`) on ``example`` (already on the device, in the module's memory format), taken when it
    is at least :data:`SERVING_MIN_SPEEDUP` times faster. The choice and both timings are logged.

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

    def seconds(dtype: torch.dtype | None, count: int) -> float:
        runs = repeats if count > PROBE_FEW_IMAGES else 1  # the first check needs only the order of magnitude
        return forward_seconds(module, example[:count], dtype, runs) / runs

    chosen, timings = choose_autocast(candidate_dtype(example.device), len(example), seconds, SERVING_MIN_SPEEDUP,
                                      device_type=example.device.type)
    log.info("%s", describe_choice(chosen, timings, f"forward of {len(example)} images"))
    return chosen
