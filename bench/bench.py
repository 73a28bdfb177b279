"""``make bench``: speed and memory of the training, input, serving, pipeline and tuning paths, as ratios.

Every row compares two things measured in this run on this machine (never a number from elsewhere), prints one
table and writes it to ``bench/results/latest.json`` and ``latest.md`` (``quick.*`` with ``--quick``), with the
machine's description. Rows (goals from issue 7):

1. training loop: ``train.Training.train_one_epoch`` vs a seed-style loop, img/s (goal >= 1.5x)
2. input pipeline: DataLoader-only vs model step; real-JPEG training / synthetic-tensor training (goal >= 0.9)
3. endpoint: p50 latency / bare forward (goal <= 1.2x); req/s at 8 clients, batching / one-at-a-time (>= 1.5x);
   CPU serving paths compared
4. local pipeline: ``run-local`` wall time by step (the slowest row; ``--skip-pipeline`` leaves it out)
5. tuning: trial-epochs until the best objective, pruning / none (goal <= 0.6x)
6. peak memory (RSS; GPU memory where present) of training and serving
7. epoch phases: where one epoch of the local pipeline's training goes (data, step, hook, validation, checkpoint)

A row that cannot run (a part not built yet, a failure) prints ``not available: <why>`` instead of stopping the
bench. Usage: ``.venv/bin/python bench/bench.py [--quick] [--rows 1,2,3] [--skip-pipeline] [--threads N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import (  # noqa: E402
    ROOT,
    Result,
    add_project_paths,
    cpu_bf16,
    cpu_features,
    load_average,
    machine_info,
    not_available,
)

ROW_NAMES = {1: "training loop", 2: "input pipeline", 3: "endpoint", 4: "local pipeline", 5: "tuning",
             6: "peak memory", 7: "epoch phases"}
#: Rows run in this order: the slowest (4) last, so that it gets whatever is left of the time budget.
RUN_ORDER = (1, 2, 3, 5, 6, 7, 4)


def parse_rows(text: str) -> list[int]:
    """``"1,2,3"`` -> ``[1, 2, 3]``. Raises argparse.ArgumentTypeError naming the valid rows."""
    try:
        rows = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        rows = []
    if not rows or any(row not in ROW_NAMES for row in rows):
        raise argparse.ArgumentTypeError(f"--rows {text!r}: give a comma-separated subset of 1-7, e.g. 1,2,3")
    return rows


def build_parser() -> argparse.ArgumentParser:
    add_project_paths()
    from imgclf.host import usable_cpus

    cpus = usable_cpus()
    parser = argparse.ArgumentParser(prog="bench/bench.py", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run (results go to quick.*)")
    parser.add_argument("--rows", type=parse_rows, default=sorted(ROW_NAMES), help="e.g. 1,2,3 (default: all)")
    parser.add_argument("--skip-pipeline", action="store_true", help="leave out row 4 (run-local, the slowest)")
    # One thread by default: on a 2-core host shared with other work, 2 OpenMP threads measured 3-5x slower and
    # far noisier than 1 (a descheduled thread stalls every parallel region); --threads 2 on a quiet machine.
    parser.add_argument("--threads", type=int, default=1,
                        help=f"torch threads of every measured process (default 1; this host has {cpus} CPUs)")
    parser.add_argument("--budget-s", type=float, default=840.0,
                        help="whole-bench time budget in seconds; row 4's timeout is what is left (default 840)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="results folder")
    return parser


def run_rows(args, log) -> tuple[list[Result], dict]:
    import torch
    from bench_images import write_photo_folder

    torch.set_num_threads(args.threads)
    bf16 = cpu_bf16()
    rows = [row for row in RUN_ORDER if row in args.rows and not (row == 4 and args.skip_pipeline)]
    memory: dict = {}
    results: list[Result] = []
    timings: dict = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-") as scratch:
        photos = Path(scratch) / "photos"
        if {1, 2, 6} & set(rows):
            count = 48 if args.quick else 320
            log(f"writing {count} photo-like 500x375 JPEGs")
            write_photo_folder(photos, count)
        for row in rows:
            log(f"row {row}: {ROW_NAMES[row]}")
            row_started = time.perf_counter()
            try:
                results += run_row(row, args, photos, bf16, memory, time.perf_counter() - started)
            except Exception as error:  # noqa: BLE001 - one broken row must not lose the others
                traceback.print_exc()
                results.append(not_available(row, ROW_NAMES[row], f"{type(error).__name__}: {error}"[:300]))
            timings[row] = round(time.perf_counter() - row_started, 1)
    label_machine_dependence(results)
    if 4 in args.rows and args.skip_pipeline:
        results.append(not_available(4, ROW_NAMES[4], "skipped (--skip-pipeline)"))
    results.sort(key=lambda result: result.row)
    return results, {"row_seconds": timings, "total_seconds": round(time.perf_counter() - started, 1)}


#: Rows whose default path depends on CPU features: the autocast choice (rows 1-3, 6) is timed at start-up, and
#: bf16 only wins with AVX512-BF16 or AMX; the table says which of those this machine has.
FEATURE_ROWS = (1, 2, 3, 6)
#: Result names of variants forced away from the shipped defaults: compared, never judged against a goal ("met"
#: is for the default configuration of the machine the bench runs on).
FORCED_MARKERS = ("--amp false", "--workers 0", "forced fp32")


def label_machine_dependence(results: list[Result]) -> None:
    """Append the CPU features each feature-dependent row depended on, and drop the goal of forced variants."""
    features = [name for name in cpu_features() if name in ("avx512_bf16", "amx")]
    said = f"CPU features it depended on: {', '.join(features) if features else 'none (no AVX512-BF16, no AMX)'}"
    for result in results:
        if result.row in FEATURE_ROWS and result.available:
            result.detail = f"{result.detail}; {said}" if result.detail else said
        if result.goal and any(marker in result.name for marker in FORCED_MARKERS):
            result.detail = f"(not the default configuration: compared, not judged; goal {result.goal}) " \
                            f"{result.detail}"
            result.goal = None


def run_row(row: int, args, photos: Path, bf16: bool, memory: dict, elapsed_s: float) -> list[Result]:
    """Run one row with the sizes of ``--quick`` or the full bench."""
    from bench_training import TrainSizes

    quick, threads = args.quick, args.threads
    train_sizes = TrainSizes(32, 16, steps=2, warmup_steps=1, repeats=1) if quick else TrainSizes()
    if row == 1:
        from bench_training import row_training_loop

        return row_training_loop(photos, train_sizes, threads, bf16)
    if row == 2:
        from bench_training import row_input_pipeline

        return row_input_pipeline(photos, train_sizes, threads, bf16)
    if row == 3:
        from bench_serving import ServeSizes, row_endpoint

        sizes = ServeSizes(latency_requests=10, load_requests=24, forward_repeats=5, compile=False) if quick \
            else ServeSizes()
        return row_endpoint(threads, sizes, bf16, memory)
    if row == 4:
        from bench_pipeline import row_local_pipeline

        timeout = max(60.0, args.budget_s - elapsed_s - 20.0)
        return row_local_pipeline(quick, timeout)
    if row == 5:
        from bench_tuning import TuneSizes, row_tuning

        sizes = TuneSizes(trials=4, epochs=3, train_per_class=10, validation_per_class=5) if quick else TuneSizes()
        return row_tuning(sizes, threads)
    if row == 7:
        from bench_phases import row_epoch_phases

        return row_epoch_phases(threads, steps=2 if quick else 8, per_class=40 if quick else 500)
    from bench_memory import row_memory

    return row_memory(photos, train_sizes.image_size, train_sizes.batch_size, 1 if quick else 3, threads, memory)


# -- output ---------------------------------------------------------------------------------------------------------


def _ratio(result: Result) -> str:
    return "" if result.ratio is None else f"{result.ratio:.2f}x"


def _met(result: Result) -> str:
    return {True: "yes", False: "no", None: ""}[result.met]


def print_table(results: list[Result], machine: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"bench: {machine['cpu_count']} CPUs ({machine['cpu_model']}), {machine['torch_threads']} "
                        f"torch threads, torch {machine['torch']}, {machine['date']}", show_lines=True)
    for column, style in (("#", None), ("measure", "bold"), ("ratio", "cyan"), ("goal", None), ("met", None),
                          ("detail", "dim")):
        table.add_column(column, style=style, overflow="fold")
    for result in results:
        met = _met(result)
        table.add_row(str(result.row), result.name, _ratio(result), result.goal or "",
                      f"[green]{met}[/]" if met == "yes" else f"[red]{met}[/]" if met == "no" else "",
                      result.detail)
    console = Console()
    if not console.is_terminal:  # piped or redirected: room for the detail column rather than 80 columns
        console = Console(width=200)
    console.print(table)


def markdown(results: list[Result], machine: dict, run: dict) -> str:
    lines = [
        "# Bench results",
        "",
        f"- date: {machine['date']}; command: `{run['command']}`; total {run['total_seconds']} s",
        f"- machine: {machine['cpu_count']} CPUs ({machine['cpu_model']}; features: "
        f"{', '.join(machine['cpu_features']) or 'none of note'}), GPU: {machine['gpu'] or 'none'}",
        f"- torch {machine['torch']}, torchvision {machine['torchvision']}, Python {machine['python']}, "
        f"{machine['torch_threads']} torch threads",
        f"- load average (1, 5, 15 min) at start {machine['load_average_start']}, at end "
        f"{machine['load_average_end']}: a busy host makes the absolute numbers noisy; the ratios are measured "
        "round-robin in the same run",
        "",
        "| # | measure | ratio | goal | met | detail |",
        "|---|---|---|---|---|---|",
    ]
    for result in results:
        detail = result.detail.replace("|", "/")
        lines.append(f"| {result.row} | {result.name} | {_ratio(result)} | {result.goal or ''} | {_met(result)} | "
                     f"{detail} |")
    return "\n".join(lines) + "\n"


def write_results(out: Path, stem: str, results: list[Result], machine: dict, run: dict) -> tuple[Path, Path]:
    """Write ``<stem>.json`` and ``<stem>.md`` atomically (a ``.tmp`` file renamed into place)."""
    out.mkdir(parents=True, exist_ok=True)
    payload = {"machine": machine, "run": run, "results": [result.as_dict() for result in results]}
    written = []
    for suffix, text in ((".json", json.dumps(payload, indent=1, default=str) + "\n"),
                         (".md", markdown(results, machine, run))):
        path = out / f"{stem}{suffix}"
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(text, encoding="utf-8")
        temporary.replace(path)
        written.append(path)
    return written[0], written[1]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads < 1:
        build_parser().error(f"--threads must be >= 1, got {args.threads}")
    add_project_paths()
    os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
    machine = machine_info(args.threads)

    def log(message: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    results, run = run_rows(args, log)
    machine["load_average_end"] = load_average()
    run["command"] = "bench/bench.py " + " ".join(argv if argv is not None else sys.argv[1:])
    run["quick"] = args.quick
    print_table(results, machine)
    json_path, md_path = write_results(args.out, "quick" if args.quick else "latest", results, machine, run)
    log(f"wrote {json_path} and {md_path} in {run['total_seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
