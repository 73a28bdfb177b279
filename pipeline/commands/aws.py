"""AWS commands: definition, check, iam-policies, upsert, start, status, schedule, unschedule, estimate, teardown.

Every command takes ``--config pipeline.yaml`` and repeated ``--set section.key=value``. ``definition``,
``check``, ``iam-policies`` and ``estimate`` are offline; the others call AWS with the default credential chain
(``AWS_PROFILE``...) in the config's region (``AWS_ENDPOINT_URL`` redirects them, e.g. to moto).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from pipeline.errors import UserError


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=None, help="pipeline config (default: pipeline.yaml)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value, e.g. --set tuning.max_jobs=8 (YAML scalar; repeatable)",
    )  # fmt: skip


def _config(args, local: bool = False):
    from pipeline.config import load_config

    return load_config(args.config, args.overrides, local=local)


def register(subparsers) -> None:
    """Add the AWS commands to ``subparsers`` (see the module docstring)."""
    p = subparsers.add_parser(
        "definition", help="print the pipeline definition JSON (offline, no credentials)",
        description="Build the pipeline from the config with no AWS call and print its definition JSON (sorted "
        "keys): the same config always gives the same bytes.",
    )  # fmt: skip
    _common(p)
    p.add_argument("--local", action="store_true", help="merge the config's local: block (what run-local runs)")
    p.add_argument("--out", type=Path, help="write to this file instead of stdout")
    p.set_defaults(func=cmd_definition)

    p = subparsers.add_parser(
        "check", help="check the config and its definition against AWS's documented constraints (offline)",
        description="Build the definition offline and check it and the config against the SageMaker API's "
        "constraints (request shapes from botocore's service model, instance types per job kind, Hyperband, "
        "range scaling, KMS on instance-store types, ...). One finding per line with its fix; exit 1 on any. "
        "`upsert` runs the same check first.",
    )  # fmt: skip
    _common(p)
    p.set_defaults(func=cmd_check)

    p = subparsers.add_parser(
        "iam-policies", help="write docs/iam/*.json filled in for this config (account, region, ECR registry)",
        description="Copy the policy and trust documents of docs/iam/ to --out with REGION, ACCOUNT_ID (from "
        "role_arn) and DLC_ACCOUNT_ID (the AWS account of the PyTorch containers in the config's region, from the "
        "SageMaker SDK's image URI config) replaced.",
    )  # fmt: skip
    _common(p)
    p.add_argument("--out", type=Path, required=True, help="folder to write the JSON files to")
    p.set_defaults(func=cmd_iam_policies)

    p = subparsers.add_parser(
        "upsert", help="upload the code, create/update the model package group, deploy Lambda and pipeline",
        description="Create or update the pipeline in AWS (safe to repeat). Uploads the content-hashed code "
        "bundle only when missing.",
    )  # fmt: skip
    _common(p)
    p.set_defaults(func=cmd_upsert)

    p = subparsers.add_parser("start", help="start an execution (parameters default to the definition's)")
    _common(p)
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="pipeline parameter override, e.g. --param AccuracyThreshold=0.95 (repeatable)")
    p.add_argument("--wait", action="store_true", help="then watch it like `status --watch`")
    p.set_defaults(func=cmd_start)

    p = subparsers.add_parser("status", help="an execution's status and its steps (latest by default)")
    _common(p)
    p.add_argument("--execution-arn", help="execution to show (default: the latest)")
    p.add_argument("--watch", action="store_true", help="refresh a live display until the execution ends")
    p.add_argument("--interval", type=float, default=15.0, help="seconds between refreshes (default 15)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_status)

    p = subparsers.add_parser(
        "schedule", help="run the pipeline on a schedule (EventBridge Scheduler)",
        description="Create or update the schedule <pipeline_name>-schedule. Examples: --cron '0 3 * * ? *' "
        "(03:00 UTC daily), --rate '1 day'. Executions use the parameters' defaults.",
    )  # fmt: skip
    _common(p)
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--cron", help="EventBridge cron: minutes hours day-of-month month day-of-week year")
    group.add_argument("--rate", help="'<n> minutes|hours|days', e.g. '12 hours'")
    p.set_defaults(func=cmd_schedule)

    p = subparsers.add_parser("unschedule", help="delete the pipeline's schedule (safe to run twice)")
    _common(p)
    p.set_defaults(func=cmd_unschedule)

    p = subparsers.add_parser("estimate", help="cost of one execution and of the endpoint (offline)")
    _common(p)
    p.set_defaults(func=cmd_estimate)

    p = subparsers.add_parser(
        "teardown", help="delete the endpoint, its configs and models, and the schedule (asks first)",
        description="Delete what keeps costing money. The model package group is kept. Safe to run twice.",
    )  # fmt: skip
    _common(p)
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument("--delete-pipeline", action="store_true", help="also delete the pipeline and the deploy Lambda")
    p.set_defaults(func=cmd_teardown)


def cmd_definition(args) -> int:
    """Print (or write to ``--out``) the definition JSON of the config; offline."""
    from pipeline.build import definition_json

    text = definition_json(_config(args, local=args.local))
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
        print(f"wrote {args.out} ({len(text)} bytes)", file=sys.stderr)
    else:
        print(text)
    return 0


def cmd_check(args) -> int:
    """Print each finding of :func:`pipeline.check.check` on its own line; exit 0 when there is none, else 1."""
    from pipeline.check import check

    config = _config(args)
    findings = check(config)
    for finding in findings:
        print(finding)
    if findings:
        print(f"{len(findings)} problem(s): AWS would refuse or misrun this pipeline", file=sys.stderr)
        return 1
    print(f"pipeline {config.pipeline_name}: no problem found")
    return 0


def cmd_iam_policies(args) -> int:
    """Write the filled-in IAM documents (:func:`pipeline.aws.iam_documents`) to ``--out``."""
    from pipeline import aws

    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in aws.iam_documents(_config(args)).items():
        (args.out / name).write_text(text, encoding="utf-8")
        print(f"wrote {args.out / name}")
    return 0


def cmd_upsert(args) -> int:
    from pipeline import aws

    result = aws.upsert(_config(args))
    print(f"{'created' if result.created else 'updated'} {result.pipeline_arn}")
    for uri in result.uploaded:
        print(f"uploaded {uri}")
    if result.already_there:
        print(f"{len(result.already_there)} code object(s) already in S3 (same content hash)")
    if result.lambda_function:
        print(f"deploy Lambda {result.lambda_function}")
    return 0


def cmd_start(args) -> int:
    from pipeline import aws

    config = _config(args)
    params = aws.parse_params(args.param)
    _check_params(config, params)
    arn = aws.start(config, params)
    print(arn)
    if args.wait:
        return _watch(config, arn, interval=15.0)
    return 0


def _check_params(config, params: dict[str, str]) -> None:
    """Refuse, before any AWS call, a --param the config's definition does not declare or a value not of its type
    (the same check run-local makes: pipeline.local.executor.resolve_parameters)."""
    from pipeline.build import build
    from pipeline.local.executor import ExecutionError, resolve_parameters

    declared = json.loads(build(config).definition).get("Parameters", [])
    try:
        resolve_parameters(declared, params)
    except ExecutionError as error:
        raise UserError(f"{error}; nothing was started") from error


def _table(execution):
    from rich.table import Table

    table = Table(title=f"{execution.status}  {execution.arn}", title_justify="left")
    for column in ("step", "status", "started", "ended", "cache", "failure reason"):
        table.add_column(column, overflow="fold")
    for step in execution.steps or []:
        table.add_row(step.name, step.status, step.started or "", step.ended or "", "hit" if step.cache_hit else "",
                      step.failure_reason or "")  # fmt: skip
    if execution.steps is None:
        table.caption = execution.note
    elif execution.failure_reason:
        table.caption = f"failure: {execution.failure_reason}"
    return table


def _watch(config, arn: str | None, interval: float) -> int:
    from rich.live import Live

    from pipeline import aws

    execution = aws.status(config, arn)
    with Live(_table(execution), refresh_per_second=1) as live:
        while not execution.done:
            time.sleep(interval)
            execution = aws.status(config, execution.arn)
            live.update(_table(execution))
    return 0 if execution.status == "Succeeded" else 1


def cmd_status(args) -> int:
    """Show the execution; exit 0 unless ``--watch`` ends on a failed or stopped execution."""
    from rich.console import Console

    from pipeline import aws, tracking

    config = _config(args)
    if args.watch:
        return _watch(config, args.execution_arn, args.interval)
    execution = aws.status(config, args.execution_arn)
    if args.json:
        from dataclasses import asdict

        print(json.dumps(asdict(execution), indent=2, sort_keys=True))
    else:
        Console().print(_table(execution))
        line = tracking.status_line(config)
        if line:
            print(line)
    return 0


def cmd_schedule(args) -> int:
    from pipeline import aws

    print(aws.schedule(_config(args), cron=args.cron, rate=args.rate))
    return 0


def cmd_unschedule(args) -> int:
    from pipeline import aws

    config = _config(args)
    deleted = aws.unschedule(config)
    print(f"deleted schedule {aws.schedule_name(config)}" if deleted else f"no schedule {aws.schedule_name(config)}")
    return 0


def cmd_estimate(args) -> int:
    from pipeline.estimate import estimate, render

    print(render(estimate(_config(args))))
    return 0


def cmd_teardown(args) -> int:
    from pipeline import aws

    config = _config(args)
    endpoints = " and ".join(s.endpoint_name for s in (config.deploy.stages.staging, config.deploy.stages.production))
    what = f"endpoints {endpoints} (+ their configs, models, alarms and rules), schedule {aws.schedule_name(config)}"
    if args.delete_pipeline:
        what += f", pipeline {config.pipeline_name} and Lambda {config.deploy.lambda_function_name}"
    if not args.yes:
        if not sys.stdin.isatty():
            raise UserError(f"teardown would delete {what}; pass --yes to confirm without a terminal")
        if input(f"Delete {what} in {config.region}? [y/N] ").strip().lower() not in ("y", "yes"):
            print("nothing deleted")
            return 1
    deleted = aws.teardown(config, delete_pipeline=args.delete_pipeline)
    for item in deleted:
        print(f"deleted {item}")
    if not deleted:
        print("nothing to delete")
    return 0
