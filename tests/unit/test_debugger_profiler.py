"""SystemMonitor's samples and the profiler rules LowGPUUtilization and CPUBottleneck (SageMaker's semantics)."""

from __future__ import annotations

import json
import time

import pytest

from imgclf.debugger.profiler import STEP_TIMINGS_FILE, SYSTEM_METRICS_FILE, SystemMonitor
from imgclf.debugger.profiler_rules import cpu_bottleneck, load_profiler, low_gpu_utilization


def test_monitor_samples_in_the_background_and_records_steps(tmp_path):
    with SystemMonitor(str(tmp_path), interval_s=0.05) as monitor:
        deadline = time.time() + 0.4
        while time.time() < deadline:  # keep a core busy so cpu_percent has something to measure
            sum(i * i for i in range(20000))
        monitor.record_step(0.010, 0.030)
        monitor.record_step(0.020, 0.025)
    samples, steps = load_profiler(tmp_path)
    assert len(samples) >= 4
    assert all(0.0 <= s["cpu_percent"] <= 100.0 and 0 < s["memory_percent"] < 100 for s in samples)
    assert all(s["process_rss_mb"] > 10 and isinstance(s["gpus"], list) for s in samples)
    assert [s["timestamp"] for s in samples] == sorted(s["timestamp"] for s in samples)
    assert [(s["step"], s["data_seconds"], s["compute_seconds"]) for s in steps] == [(0, 0.01, 0.03), (1, 0.02, 0.025)]
    monitor.stop()  # idempotent
    assert (tmp_path / SYSTEM_METRICS_FILE).is_file() and (tmp_path / STEP_TIMINGS_FILE).is_file()


def test_torn_last_line_of_an_interrupted_job_is_skipped(tmp_path):
    (tmp_path / SYSTEM_METRICS_FILE).write_text(json.dumps({"cpu_percent": 5, "gpus": []}) + '\n{"cpu_perc')
    samples, steps = load_profiler(tmp_path)
    assert samples == [{"cpu_percent": 5, "gpus": []}] and steps == []


def test_interval_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="interval_s must be > 0"):
        SystemMonitor(str(tmp_path), interval_s=0)


def gpu_samples(utilizations, cpu=50.0):
    return [{"timestamp": float(i), "cpu_percent": cpu, "gpus": [{"index": 0, "utilization": u}]}
            for i, u in enumerate(utilizations)]  # fmt: skip


def test_low_gpu_utilization_is_not_applicable_on_a_cpu_machine():
    status, evidence = low_gpu_utilization([{"cpu_percent": 90.0, "gpus": []}] * 2000)
    assert status == "NotApplicable" and "no GPU" in evidence["reason"]


def test_low_gpu_utilization_flags_underuse_and_fluctuation_after_patience():
    busy = [95.0] * 1200
    assert low_gpu_utilization(gpu_samples(busy))[0] == "NoIssuesFound"
    # p95 below 70 after the first 1000 samples: under-utilized
    status, evidence = low_gpu_utilization(gpu_samples([95.0] * 1000 + [40.0] * 600))
    assert status == "IssuesFound" and evidence["first"]["issue"] == "underutilized"
    assert evidence["first"]["value"] < 70 and evidence["first"]["sample"] >= 1000
    # p95 high but p5 below 10: fluctuating (idle half the time)
    status, evidence = low_gpu_utilization(gpu_samples([95.0, 0.0] * 800))
    assert status == "IssuesFound" and evidence["first"]["issue"] == "fluctuating"
    # low utilization only during the first `patience` samples (warm-up) is not judged
    assert low_gpu_utilization(gpu_samples([0.0] * 1000 + [95.0] * 600), window=100)[0] == "NoIssuesFound"
    status, evidence = low_gpu_utilization(gpu_samples([10.0] * 50))
    assert status == "NotApplicable" and "patience=1000" in evidence["reason"]


def test_cpu_bottleneck_with_gpu_counts_samples_with_idle_gpu_and_busy_cpu():
    samples = gpu_samples([5.0] * 1600, cpu=95.0)
    status, evidence = cpu_bottleneck(samples, [])
    assert status == "IssuesFound" and evidence["value"] == 100.0 and evidence["threshold"] == 50.0
    healthy = gpu_samples([5.0] * 1000 + [90.0] * 600, cpu=95.0)
    assert cpu_bottleneck(healthy, [])[0] == "NoIssuesFound"


def test_cpu_bottleneck_without_gpu_compares_data_loading_with_compute_time():
    cpu_only = [{"timestamp": 0.0, "cpu_percent": 99.0, "gpus": []}]
    slow_input = [{"step": i, "data_seconds": 0.05, "compute_seconds": 0.01} for i in range(30)]
    status, evidence = cpu_bottleneck(cpu_only, slow_input, patience=5)
    assert status == "IssuesFound" and evidence["evaluations"] == 25
    assert "data_seconds > compute_seconds" in evidence["basis"]
    assert evidence["data_fraction_all_steps"] == pytest.approx(0.05 / 0.06)
    fast_input = [{"step": i, "data_seconds": 0.001, "compute_seconds": 0.02} for i in range(30)]
    assert cpu_bottleneck(cpu_only, fast_input, patience=5)[0] == "NoIssuesFound"
    status, evidence = cpu_bottleneck(cpu_only, fast_input)
    assert status == "NotApplicable" and "only 30 datapoints" in evidence["reason"]


def test_gpu_samples_come_from_nvidia_smi_when_nvml_is_missing(tmp_path, monkeypatch):
    import sys

    from imgclf.debugger import profiler

    fake = tmp_path / "nvidia-smi"  # prints what `nvidia-smi --query-gpu=... --format=csv,noheader,nounits` prints
    fake.write_text("#!/bin/sh\necho '0, 87, 5120, 81559'\necho '1, 3, 10, 81559'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    monkeypatch.setitem(sys.modules, "pynvml", None)
    reader = profiler._GpuReader()
    assert reader.read() == [
        {"index": 0, "utilization": 87.0, "memory_used_mb": 5120.0, "memory_total_mb": 81559.0},
        {"index": 1, "utilization": 3.0, "memory_used_mb": 10.0, "memory_total_mb": 81559.0},
    ]
