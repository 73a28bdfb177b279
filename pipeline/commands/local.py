"""``run-local``: execute the pipeline definition end to end on this machine (no AWS, no Docker, no GPU)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipeline.errors import UserError

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


def run(args: argparse.Namespace) -> int:
    """Run (or resume) one local execution; print its summary; with ``--demo`` run the endpoint demo."""
    import pipeline._entrypoints  # noqa: F401  (puts entrypoints/ on sys.path for imgclf)
    from imgclf.host import usable_cpus
    from pipeline.local.demo import run_demo
    from pipeline.local.executor import ExecutionError, LocalExecution, RunOptions
    from pipeline.local.progress import ProgressDisplay
    from pipeline.local.store import StoreError

    parameters = _key_values(args.param, "--param")
    options = RunOptions(
        store=args.store,
        runs=args.runs,
        parameters=parameters,
        cpus=args.cpus or usable_cpus(),
        keep_job_dirs=args.keep_job_dirs,
    )
    from pipeline.local.preflight import check_image_folder, describe, estimate_run

    # the folder's layout is checked here, before the execution starts, so that its errors name the user's folder
    # (split.py inside the job only sees its container path)
    classes = check_image_folder(args.data) if args.data is not None else None
    config = None
    try:
        if args.resume:
            if args.definition or args.overrides or parameters:
                raise UserError(
                    "--resume reuses the run's definition and parameters: drop --definition/--set/--param"
                )
            execution = LocalExecution.resume(args.resume, options)
        else:
            if args.definition:
                definition, pipeline_name = json.loads(args.definition.read_text()), None
            else:
                from pipeline.build import build
                from pipeline.config import load_config

                config = load_config(args.config, args.overrides, local=True)
                built = build(config)
                definition, pipeline_name = json.loads(built.definition), config.pipeline_name
                options.uploads = built.uploads
            if args.data is not None:
                options.links = {_input_uri(definition, parameters): args.data}
            execution = LocalExecution.start(definition, options, pipeline_name)
    except (ExecutionError, StoreError, OSError, json.JSONDecodeError) as error:
        raise UserError(str(error)) from error
    if args.data is not None and args.resume:
        options.links = {
            _input_uri(
                execution.definition, {k: str(v) for k, v in execution.record["Parameters"].items()}
            ): args.data
        }

    display = ProgressDisplay(
        list(execution.nodes), {n: node.type for n, node in execution.nodes.items()}, logs=not args.no_logs
    )
    options.echo, options.on_event = display.echo, display.on_event
    console = display.console
    console.print(
        f"execution {execution.id}: store {execution.store.root}, records {execution.run_dir}",
        highlight=False, soft_wrap=True,
    )  # fmt: skip
    if config is not None:
        if classes:
            line = describe(estimate_run(config, sum(classes.values()), options.cpus))
            console.print(f"{line}; {sum(classes.values()):,} images in {len(classes)} classes", highlight=False,
                          soft_wrap=True)  # fmt: skip
        else:
            training = config.training
            console.print(f"training {training.model} (weights {training.weights}) at {training.image_size} px "
                          "(training.image_size)", highlight=False, soft_wrap=True)  # fmt: skip
    try:
        with display:
            record = execution.run()
    except StoreError as error:
        raise UserError(str(error)) from error
    console.print((execution.run_dir / "summary.txt").read_text(), highlight=False, markup=False)
    console.print(f"records: {execution.run_dir / 'execution.json'}", highlight=False)
    status = 0 if record["PipelineExecutionStatus"] == "Succeeded" else 1
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
