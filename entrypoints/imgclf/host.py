"""The CPUs this process may use: the one count that train.py, local mode, the endpoint and the benchmarks share."""

from __future__ import annotations

import os


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, as ``taskset`` and container cpusets set it; the machine's
    count where the platform has no affinity). At least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1
