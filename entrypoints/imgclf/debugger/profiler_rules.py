"""Profiler rules over ``SystemMonitor``'s files: LowGPUUtilization and CPUBottleneck.

Semantics and defaults follow SageMaker's built-in profiler rules
(https://docs.aws.amazon.com/sagemaker/latest/dg/debugger-built-in-profiler-rules.html, defaults as in
``smdebug_rulesconfig.profiler_rules.rules``):

- LowGPUUtilization(threshold_p95=70, threshold_p5=10, window=500, patience=1000): per GPU, after the first
  ``patience`` samples (never judged: initialization), the 95th and 5th percentiles over each ``window`` of
  samples (or all samples after patience when fewer than a window); issue when p95 <
  threshold_p95 (under-utilization) or when p95 >= threshold_p95 and p5 < threshold_p5 (fluctuation).
  NotApplicable when no GPU was sampled (a CPU machine): it does not pass silently.
- CPUBottleneck(threshold=50, gpu_threshold=10, cpu_threshold=90, patience=1000): with GPU samples, a sample
  after the first ``patience`` is a bottleneck when GPU utilization < gpu_threshold while CPU utilization >
  cpu_threshold; issue when more than ``threshold`` percent of samples are bottlenecks. Without a GPU the same
  question is asked of the input pipeline: a training step after the first ``patience`` steps is a bottleneck
  when it waited longer for its batch than it computed (data_seconds > compute_seconds), and the issue fires
  when more than ``threshold`` percent of steps are. (gpu_threshold and cpu_threshold do not apply then.)

Too few datapoints after ``patience`` gives NotApplicable with the counts, so a short run says it was not
evaluated; pass a smaller patience (``--low-gpu-utilization-patience``, ``--cpu-bottleneck-patience``) to
evaluate short runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .profiler import STEP_TIMINGS_FILE, SYSTEM_METRICS_FILE


def load_jsonl(path: Path) -> list[dict]:
    """Read a JSON-lines file, skipping a torn last line (a job killed mid-write); [] when missing."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def load_profiler(profiler_dir: Path) -> tuple[list[dict], list[dict]]:
    """Return ``(system samples, step timings)`` from a ``SystemMonitor`` folder."""
    return load_jsonl(Path(profiler_dir) / SYSTEM_METRICS_FILE), load_jsonl(Path(profiler_dir) / STEP_TIMINGS_FILE)


def gpu_series(samples: list[dict]) -> dict[int, np.ndarray]:
    """``{gpu index: utilization per sample (percent)}`` from system samples."""
    series: dict[int, list[float]] = {}
    for sample in samples:
        for gpu in sample.get("gpus") or []:
            series.setdefault(int(gpu["index"]), []).append(float(gpu["utilization"]))
    return {index: np.asarray(values) for index, values in series.items()}


def low_gpu_utilization(
    samples: list[dict], threshold_p95=70.0, threshold_p5=10.0, window=500, patience=1000
) -> tuple[str, dict]:
    """Evaluate LowGPUUtilization (see the module docstring); returns ``(status, evidence)``."""
    parameters = dict(threshold_p95=threshold_p95, threshold_p5=threshold_p5, window=window, patience=patience)
    series = gpu_series(samples)
    if not series:
        return "NotApplicable", {
            "parameters": parameters,
            "reason": f"no GPU in the {len(samples)} system samples (CPU-only machine)",
        }
    evaluations, findings, closest = 0, [], None
    for index, values in series.items():
        # windows hold only samples after the first `patience` (warm-up is never judged); a window is judged once
        # full, or at the last sample when the run after patience is shorter than one window
        ends = range(min(patience + window - 1, len(values) - 1), len(values)) if len(values) > patience else []
        for end in ends:
            recent = values[max(patience, end - window + 1) : end + 1]
            p95, p5 = (float(x) for x in np.percentile(recent, [95, 5]))
            evaluations += 1
            evidence = {"gpu": index, "sample": end, "p95": p95, "p5": p5}
            if p95 < threshold_p95:
                findings.append({**evidence, "issue": "underutilized", "value": p95, "threshold": threshold_p95})
            elif p5 < threshold_p5:
                findings.append({**evidence, "issue": "fluctuating", "value": p5, "threshold": threshold_p5})
            elif closest is None or p95 - threshold_p95 < closest["p95"] - threshold_p95:
                closest = evidence
    longest = max(len(values) for values in series.values())
    if evaluations == 0:
        return "NotApplicable", {
            "parameters": parameters,
            "reason": f"only {longest} GPU samples; the rule waits for patience={patience} samples first",
        }
    summary = {gpu: {"p95": float(np.percentile(v, 95)), "p5": float(np.percentile(v, 5))} for gpu, v in series.items()}
    evidence = {"parameters": parameters, "evaluations": evaluations, "whole_run": summary}
    if findings:
        return "IssuesFound", {**evidence, "violations": len(findings), "first": findings[0]}
    return "NoIssuesFound", {**evidence, "closest": closest}


def cpu_bottleneck(
    samples: list[dict], steps: list[dict], threshold=50.0, gpu_threshold=10.0, cpu_threshold=90.0, patience=1000
) -> tuple[str, dict]:
    """Evaluate CPUBottleneck (see the module docstring); returns ``(status, evidence)``."""
    parameters = dict(threshold=threshold, gpu_threshold=gpu_threshold, cpu_threshold=cpu_threshold, patience=patience)
    if gpu_series(samples):
        considered = [s for s in samples[patience:] if s.get("gpus")]
        basis = "system samples (GPU < gpu_threshold while CPU > cpu_threshold)"
        bottlenecks = [
            s
            for s in considered
            if max(g["utilization"] for g in s["gpus"]) < gpu_threshold and s["cpu_percent"] > cpu_threshold
        ]
        first = bottlenecks[0] if bottlenecks else None
        first = first and {"timestamp": first["timestamp"], "cpu_percent": first["cpu_percent"]}
        total = len(samples)
    else:
        considered = steps[patience:]
        basis = "training steps (data_seconds > compute_seconds: the input pipeline is the bottleneck)"
        bottlenecks = [s for s in considered if s["data_seconds"] > s["compute_seconds"]]
        first = bottlenecks[0] if bottlenecks else None
        first = first and {k: first[k] for k in ("step", "data_seconds", "compute_seconds")}
        total = len(steps)
    if not considered:
        return "NotApplicable", {
            "parameters": parameters,
            "basis": basis,
            "reason": f"only {total} datapoints; the rule waits for patience={patience} datapoints first",
        }
    percent = 100.0 * len(bottlenecks) / len(considered)
    evidence = {
        "parameters": parameters,
        "basis": basis,
        "evaluations": len(considered),
        "value": percent,
        "threshold": threshold,
        "bottlenecks": len(bottlenecks),
    }
    if steps:
        data = sum(s["data_seconds"] for s in steps)
        compute = sum(s["compute_seconds"] for s in steps)
        evidence["data_fraction_all_steps"] = data / (data + compute) if data + compute > 0 else 0.0
    if first:
        evidence["first"] = first
    return ("IssuesFound" if percent > threshold else "NoIssuesFound"), evidence
