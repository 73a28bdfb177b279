"""System-utilization sampler that runs beside training: ``SystemMonitor``.

Writes two JSON-lines files under ``out_dir`` (``$SM_OUTPUT_DATA_DIR/profiler`` in ``train.py``), flushed line by
line so that an interrupted job keeps what it sampled:

- ``system_metrics.jsonl``: one sample every ``interval_s`` seconds::

    {"timestamp": 1732550000.1, "elapsed_s": 0.5, "cpu_percent": 87.5, "cpu_count": 2,
     "memory_percent": 41.0, "memory_used_mb": 3250.1, "process_rss_mb": 812.4,
     "gpus": [{"index": 0, "utilization": 93.0, "memory_used_mb": 5120.0, "memory_total_mb": 81559.0}]}

  ``cpu_percent`` is the whole machine's (0-100, all cores); ``gpus`` is ``[]`` on a machine without an NVIDIA GPU.
- ``step_timings.jsonl``: one line per training step, ``{"timestamp", "step", "data_seconds", "compute_seconds"}``
  (time waiting for the next batch vs time in forward/backward/optimizer step, seconds).

This plays the part of SageMaker's system monitor (the profiler's 500 ms system metrics) for every account.
GPU numbers come from NVML (``pynvml``) when importable, else from ``nvidia-smi``; CPU and memory from psutil.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

SYSTEM_METRICS_FILE = "system_metrics.jsonl"
STEP_TIMINGS_FILE = "step_timings.jsonl"

log = logging.getLogger(__name__)


class SystemMonitor:
    """Sample CPU, memory and GPU on a background thread; record data vs compute time per step.

    ``out_dir``: folder for the two files (created). ``interval_s``: seconds between samples (> 0, default 0.5,
    SageMaker's default system-monitor interval). Raises ValueError for ``interval_s <= 0``. Use as a context
    manager or call ``start()`` / ``stop()``; ``stop()`` is idempotent.
    """

    def __init__(self, out_dir: str, interval_s: float = 0.5):
        if not float(interval_s) > 0:
            raise ValueError(f"interval_s must be > 0 seconds, got {interval_s}; SageMaker's default is 0.5")
        self.out_dir = Path(out_dir)
        self.interval_s = float(interval_s)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._steps_file = None
        self._step = 0
        self._started = 0.0
        self._gpu = _GpuReader()

    def start(self) -> SystemMonitor:
        """Open the files and start sampling (a first sample is taken at once)."""
        import psutil

        if self._thread is not None:
            return self
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._steps_file = open(self.out_dir / STEP_TIMINGS_FILE, "a", encoding="utf-8")  # noqa: SIM115
        self._process = psutil.Process(os.getpid())
        psutil.cpu_percent(interval=None)  # first call primes the counter; later calls measure since the last one
        self._started = time.time()
        self._thread = threading.Thread(target=self._run, name="system-monitor", daemon=True)
        self._thread.start()
        return self

    def record_step(self, data_seconds: float, compute_seconds: float) -> None:
        """Append one training step's timings: seconds waiting for the batch, seconds computing on it."""
        if self._steps_file is None:
            return
        line = {
            "timestamp": round(time.time(), 3),
            "step": self._step,
            "data_seconds": round(float(data_seconds), 6),
            "compute_seconds": round(float(compute_seconds), 6),
        }
        with self._lock:
            self._steps_file.write(json.dumps(line) + "\n")
            self._steps_file.flush()
            self._step += 1

    def stop(self) -> None:
        """Stop sampling, take a last sample, close the files."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout=max(5.0, 4 * self.interval_s))
        self._thread = None
        with self._lock:
            if self._steps_file is not None:
                self._steps_file.close()
                self._steps_file = None

    def __enter__(self) -> SystemMonitor:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run(self) -> None:
        with open(self.out_dir / SYSTEM_METRICS_FILE, "a", encoding="utf-8") as samples:
            while True:
                try:
                    samples.write(json.dumps(self._sample()) + "\n")
                    samples.flush()
                except Exception as error:  # sampling must never take training down
                    log.warning("system sample failed: %s", error)
                if self._stop.wait(self.interval_s):
                    break
            try:
                samples.write(json.dumps(self._sample()) + "\n")
            except Exception as error:
                log.warning("last system sample failed: %s", error)

    def _sample(self) -> dict:
        import psutil

        memory = psutil.virtual_memory()
        now = time.time()
        return {
            "timestamp": round(now, 3),
            "elapsed_s": round(now - self._started, 3),
            "cpu_percent": psutil.cpu_percent(interval=None),
            "cpu_count": psutil.cpu_count() or 1,
            "memory_percent": memory.percent,
            "memory_used_mb": round((memory.total - memory.available) / 2**20, 1),
            "process_rss_mb": round(self._process.memory_info().rss / 2**20, 1),
            "gpus": self._gpu.read(),
        }


class _GpuReader:
    """Reads utilization and memory of every NVIDIA GPU: NVML if importable, else nvidia-smi, else nothing."""

    def __init__(self):
        self._nvml = None
        self._smi = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
        except Exception:
            self._smi = shutil.which("nvidia-smi")

    def read(self) -> list[dict]:
        if self._nvml is not None:
            return self._read_nvml()
        if self._smi is not None:
            return self._read_smi()
        return []

    def _read_nvml(self) -> list[dict]:
        nvml = self._nvml
        gpus = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            rates = nvml.nvmlDeviceGetUtilizationRates(handle)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append(
                {
                    "index": index,
                    "utilization": float(rates.gpu),
                    "memory_used_mb": round(memory.used / 2**20, 1),
                    "memory_total_mb": round(memory.total / 2**20, 1),
                }
            )
        return gpus

    def _read_smi(self) -> list[dict]:
        query = "--query-gpu=index,utilization.gpu,memory.used,memory.total"
        try:
            output = subprocess.run(
                [self._smi, query, "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=5
            ).stdout
        except (OSError, subprocess.TimeoutExpired):
            return []
        gpus = []
        for line in output.strip().splitlines():
            parts = [part.strip() for part in line.split(",")]
            try:
                index, utilization, used, total = int(parts[0]), float(parts[1]), float(parts[2]), float(parts[3])
            except (ValueError, IndexError):
                continue
            gpus.append({"index": index, "utilization": utilization, "memory_used_mb": used, "memory_total_mb": total})
        return gpus
