"""What every bench row shares: result records, interleaved timing, peak memory and the machine's description."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENTRYPOINTS = ROOT / "entrypoints"


def add_project_paths() -> None:
    """Put the repository root (``pipeline``) and ``entrypoints/`` (``imgclf``, ``train``) on ``sys.path``."""
    for path in (str(ENTRYPOINTS), str(ROOT)):
        if path not in sys.path:
            sys.path.insert(0, path)


@dataclass
class Result:
    """One line of the bench table.

    ``ratio`` is ``subject / baseline`` of the two numbers in ``detail`` (both measured in this run); ``goal`` is
    the issue's target (e.g. ``">= 1.5"``) and ``met`` whether ``ratio`` reaches it (None: no goal, or not
    measured; False for a measured row without a ratio, whose subject never reached the baseline's result).
    ``available`` is False when the part could not be measured; ``detail`` then says why.
    """

    row: int
    name: str
    ratio: float | None = None
    goal: str | None = None
    detail: str = ""
    values: dict = field(default_factory=dict)
    available: bool = True

    @property
    def met(self) -> bool | None:
        if not self.goal or not self.available:
            return None
        if self.ratio is None:  # measured, but the subject never got there (row 5: never reached the best)
            return False
        op, target = self.goal.split()
        return self.ratio >= float(target) if op == ">=" else self.ratio <= float(target)

    def as_dict(self) -> dict:
        return {**asdict(self), "met": self.met}


def not_available(row: int, name: str, why: str) -> Result:
    """A table line for a part that could not be measured: ``detail`` is ``not available: <why>``."""
    return Result(row, name, detail=f"not available: {why}", available=False)


def interleaved(runs: dict[str, Callable[[], float]], repeats: int) -> dict[str, float]:
    """Run each ``runs[name]()`` (returning items per second) ``repeats`` times, round-robin; return the medians.

    Round-robin rather than one after the other, so that a change in the machine's load (other processes on a
    shared host) hits every variant alike; the median discards the odd disturbed repeat.
    """
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(max(1, repeats)):
        for name, run in runs.items():
            samples[name].append(run())
    return {name: statistics.median(values) for name, values in samples.items()}


def timed(function: Callable[[], object]) -> float:
    """Seconds one call of ``function`` takes (``time.perf_counter``)."""
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values``, linear interpolation (numpy's default)."""
    import numpy as np

    return float(np.percentile(values, q))


# -- memory ---------------------------------------------------------------------------------------------------------


def _status_kib(pid: int | str, key: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def peak_rss_mib(pid: int | str = "self") -> float | None:
    """Peak resident set size (``VmHWM``) of process ``pid`` in MiB; None where ``/proc`` is not there."""
    kib = _status_kib(pid, "VmHWM")
    if kib is None and pid == "self":
        import resource

        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return None if kib is None else kib / 1024


def gpu_peak_mib() -> float | None:
    """Peak CUDA memory allocated by this process in MiB (None without a GPU)."""
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.max_memory_allocated() / 2**20


# -- machine --------------------------------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_features() -> list[str]:
    """The CPU features that change which fast path wins: AVX-512, bf16 (AVX512-BF16, AMX)."""
    import torch

    checks = {"avx512": "_is_avx512_supported", "avx512_bf16": "_is_avx512_bf16_supported",
              "amx": "_is_amx_tile_supported"}
    return [name for name, check in checks.items() if getattr(torch.cpu, check, lambda: False)()]


def cpu_bf16() -> bool:
    """True when this CPU runs bf16 matmuls/convolutions natively (AVX512-BF16 or AMX): CPU autocast pays off."""
    return bool({"avx512_bf16", "amx"} & set(cpu_features()))


def load_average() -> list[float] | None:
    """The 1, 5 and 15-minute load averages, rounded to 0.01 (None where the OS has none)."""
    return [round(value, 2) for value in os.getloadavg()] if hasattr(os, "getloadavg") else None


def machine_info(threads: int) -> dict:
    """CPU count and model, features, torch versions, GPU, load average and the date (UTC, ISO 8601)."""
    import torch
    import torchvision

    from imgclf.host import usable_cpus

    cpus = usable_cpus()
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu_count": cpus,
        "cpu_model": cpu_model(),
        "cpu_features": cpu_features(),
        "torch_threads": threads,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_start": load_average(),
    }
    return info
