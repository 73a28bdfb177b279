"""``run-local``: execute the pipeline definition end to end on this machine (no AWS, no Docker, no GPU)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.errors import UserError
from pipeline.local.status import StepStatus

if TYPE_CHECKING:
    from pipeline.config import Config

INPUT_PARAMETER = "InputDataUri"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "run-local",
        help="run the pipeline definition locally: every step, tuning, registry and endpoint",
        description="Build the definition from pipeline.yaml (with its local: block) and execute that JSON on this "
        "machine. A store folder plays S3; runs/<execution id>/ holds execution.json, job logs and "
        "the summary. Exit status: 0 when the execution succeeded, 1 when it failed, 2 on bad input.",
    )
    parser.add_argument("--config", type=Path, default=None, help="pipeline.yaml (default: the repository's)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set tuning.max_jobs=2 (repeatable)",
    )
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="pipeline parameter, e.g. --param AccuracyThreshold=0.95 (repeatable)",
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help=f"a local ImageFolder tree, linked into the store at the {INPUT_PARAMETER} URI",
    )
    parser.add_argument("--store", type=Path, default=Path(".store"), help="the local S3 folder (default .store)")
    parser.add_argument(
        "--runs", type=Path, default=Path("runs"), help="where executions are recorded (default runs)"
    )
    parser.add_argument(
        "--resume",
        metavar="EXECUTION_ID",
        default=None,
        help="re-run what did not succeed in runs/<EXECUTION_ID> (same definition and parameters)",
    )
    parser.add_argument(
        "--definition",
        type=Path,
        default=None,
        help="run this definition JSON file instead of building one from the config",
    )
    parser.add_argument(
        "--demo",
        action="store_true",
        help="afterwards, serve the latest Approved package and send it real test images",
    )
    parser.add_argument("--cpus", type=int, default=None, help="CPU budget (default: all this process may use)")
    parser.add_argument("--no-logs", action="store_true", help="do not echo job logs (they stay in runs/<id>/jobs)")
    parser.add_argument("--keep-job-dirs", action="store_true", help="keep the job folders of completed jobs")
    parser.set_defaults(func=run)


def _key_values(items: list[str], flag: str) -> dict[str, str]:
    values = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"{flag} {item!r}: expected NAME=VALUE")
        values[key.strip()] = value
    return values


def _input_uri(definition: dict, parameters: dict[str, str]) -> str:
    if INPUT_PARAMETER in parameters:
        return parameters[INPUT_PARAMETER]
    spec = next((p for p in definition.get("Parameters", []) if p["Name"] == INPUT_PARAMETER), None)
    if spec is None or "DefaultValue" not in spec:
        raise UserError(
            f"--data needs a pipeline parameter {INPUT_PARAMETER} with a default (or --param {INPUT_PARAMETER}=s3://...)"
        )
    return spec["DefaultValue"]


def _definition(
    args: argparse.Namespace, parameters: dict[str, str]
) -> tuple[dict, Config | None, dict[str, bytes], dict[str, str]]:
    """``(definition, config or None, uploads, parameter values)`` of the execution to start or resume.

    A resumed execution's definition and parameters are its own (``runs/<id>``); ``--definition`` runs that JSON
    as it is; otherwise the definition is built from the config, with the objects it needs in the store.
    """
    from pipeline.local.executor import read_run

    if args.resume:
        if args.definition or args.overrides or parameters:
            raise UserError("--resume reuses the run's definition and parameters: drop --definition/--set/--param")
        definition, record = read_run(args.runs, args.resume)
        return definition, None, {}, {name: str(value) for name, value in record["Parameters"].items()}
    if args.definition:
        return json.loads(args.definition.read_text()), None, {}, parameters
    from pipeline.build import build
    from pipeline.config import load_config

    config = load_config(args.config, args.overrides, local=True)
    built = build(config)
    return json.loads(built.definition), config, built.uploads, parameters


def _describe(console, config: Config, classes: dict[str, int] | None, cpus: int) -> None:
    """The model and, for a --data folder, the estimated training time and the folder's images."""
    from pipeline.local.preflight import describe, estimate_run

    if classes:
        images = sum(classes.values())
        line = f"{describe(estimate_run(config, images, cpus))}; {images:,} images in {len(classes)} classes"
    else:
        training = config.training
        line = (f"training {training.model} (weights {training.weights}) at {training.image_size} px "
                "(training.image_size)")  # fmt: skip
    console.print(line, highlight=False, soft_wrap=True)


def run(args: argparse.Namespace) -> int:
    """Run (or resume) one local execution; print its summary; with ``--demo`` run the endpoint demo."""
    from imgclf.host import usable_cpus
    from pipeline.local.demo import run_demo
    from pipeline.local.executor import ExecutionError, LocalExecution, RunOptions, step_graph
    from pipeline.local.preflight import check_image_folder
    from pipeline.local.progress import ProgressDisplay
    from pipeline.local.store import StoreError

    parameters = _key_values(args.param, "--param")
    # the folder's layout is checked here, before the execution starts, so that its errors name the user's folder
    # (split.py inside the job only sees its container path)
    classes = check_image_folder(args.data) if args.data is not None else None
    try:
        definition, config, uploads, values = _definition(args, parameters)
        nodes = step_graph(definition)
        display = ProgressDisplay(list(nodes), {n: node.type for n, node in nodes.items()}, logs=not args.no_logs)
        options = RunOptions(
            store=args.store,
            runs=args.runs,
            parameters=parameters,
            cpus=args.cpus or usable_cpus(),
            uploads=uploads,
            links={_input_uri(definition, values): args.data} if args.data is not None else {},
            echo=display.echo,
            on_event=display.on_event,
            keep_job_dirs=args.keep_job_dirs,
        )
        if args.resume:
            execution = LocalExecution.resume(args.resume, options)
        else:
            execution = LocalExecution.start(definition, options, config.pipeline_name if config else None)
    except (ExecutionError, StoreError, OSError, json.JSONDecodeError) as error:
        raise UserError(str(error)) from error
    console = display.console
    console.print(
        f"execution {execution.id}: store {execution.store.root}, records {execution.run_dir}",
        highlight=False, soft_wrap=True,
    )  # fmt: skip
    if config is not None:
        _describe(console, config, classes, options.cpus)
    try:
        with display:
            record = execution.run()
    except StoreError as error:
        raise UserError(str(error)) from error
    console.print((execution.run_dir / "summary.txt").read_text(), highlight=False, markup=False)
    console.print(f"records: {execution.run_dir / 'execution.json'}", highlight=False)
    status = 0 if record["PipelineExecutionStatus"] == StepStatus.SUCCEEDED else 1
    if status:
        console.print(f"resume with: python -m pipeline run-local --resume {execution.id}", highlight=False)
    if args.demo:
        demo_status = run_demo(record, execution.definition, execution.store, execution.run_dir, console=console)
        status = status or demo_status
        if not demo_status:
            store = "" if args.store == Path(".store") else f" --store {args.store}"
            console.print(f"keep serving this model with: python -m pipeline serve --model latest{store}",
                          highlight=False)  # fmt: skip
    sys.stdout.flush()
    return status
