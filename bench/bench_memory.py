"""Row 6: peak memory (RSS, and GPU memory where there is one) of training and serving.

Training is measured in a fresh child process per loop (this file run as a script), so the peak is that loop's
alone: the seed-style loop and ``train.Training``, with the same data and sizes as row 1. Serving is the peak RSS
of the endpoint processes row 3 ran (or of a pair started here when row 3 was not run).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_common import Result, add_project_paths, gpu_peak_mib, not_available, peak_rss_mib


def measure_training(loop: str, train_dir: Path, image_size: int, batch_size: int, steps: int, threads: int) -> dict:
    """Peak RSS/GPU MiB of a child process that trains ``steps`` batches with ``loop`` (``seed`` or ``ours``).

    Raises:
        RuntimeError: the child failed (its stderr's tail in the message).
    """
    command = [sys.executable, str(Path(__file__).resolve()), "--loop", loop, "--train-dir", str(train_dir),
               "--image-size", str(image_size), "--batch-size", str(batch_size), "--steps", str(steps),
               "--threads", str(threads)]
    child = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if child.returncode != 0:
        raise RuntimeError(f"memory probe ({loop}) failed: {child.stderr.strip()[-300:]}")
    return json.loads(child.stdout.strip().splitlines()[-1])


def row_memory(train_dir: Path, image_size: int, batch_size: int, steps: int, threads: int,
               memory: dict) -> list[Result]:
    """Row 6: our training's peak RSS over the seed-style loop's, and the endpoints' peak RSS (no goal)."""
    results = []
    try:
        seed = measure_training("seed", train_dir, image_size, batch_size, steps, threads)
        ours = measure_training("ours", train_dir, image_size, batch_size, steps, threads)
        gpu = "no GPU here" if ours.get("gpu_peak_mib") is None else f"GPU peak {ours['gpu_peak_mib']:.0f} MiB"
        results.append(Result(6, "peak RSS: training, ours / seed-style", ours["peak_rss_mib"] / seed["peak_rss_mib"],
                              None, f"ours {ours['peak_rss_mib']:.0f} MiB, seed-style {seed['peak_rss_mib']:.0f} MiB "
                              f"(resnet18, {image_size} px, batch {batch_size}, {steps} steps; {gpu})",
                              {"ours": ours, "seed": seed}))
    except (RuntimeError, subprocess.TimeoutExpired, ValueError) as error:
        results.append(not_available(6, "peak RSS: training", str(error)))
    serving = {key: value for key, value in memory.items() if key.startswith("serving_") and value}
    if serving:
        listed = ", ".join(f"{key.removeprefix('serving_').removesuffix('_peak_rss_mib')} {value:.0f} MiB"
                           for key, value in serving.items())
        results.append(Result(6, "peak RSS: endpoint process (resnet18, 224 px, after the row 3 load)", None, None,
                              listed, {"serving": serving}))
    else:
        results.append(not_available(6, "peak RSS: endpoint process", "row 3 did not run or its endpoint failed"))
    return results


def _probe(argv: list[str] | None = None) -> int:
    """Child process: train ``--steps`` batches with one loop and print ``{"peak_rss_mib", "gpu_peak_mib"}``."""
    parser = argparse.ArgumentParser(description="peak memory of one training loop (bench row 6)")
    parser.add_argument("--loop", choices=("seed", "ours"), required=True)
    parser.add_argument("--train-dir", type=Path, required=True)
    parser.add_argument("--image-size", type=int, required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    args = parser.parse_args(argv)
    add_project_paths()
    import torch
    from bench_training import OurLoop, SeedStyleLoop, TrainSizes

    torch.set_num_threads(args.threads)
    sizes = TrainSizes(args.image_size, args.batch_size, args.steps)
    classes = sum(1 for p in args.train_dir.iterdir() if p.is_dir())
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as scratch:
        loop = SeedStyleLoop(args.train_dir, sizes, classes) if args.loop == "seed" else \
            OurLoop(args.train_dir, sizes, args.threads, Path(scratch))
        loop.run(args.steps)
    print(json.dumps({"peak_rss_mib": peak_rss_mib(), "gpu_peak_mib": gpu_peak_mib()}))
    return 0


if __name__ == "__main__":
    sys.exit(_probe())
