"""The ``debug`` processing step: run the Debugger and profiler rules over a training job's output.

Reads ``--training-output`` (default ``/opt/ml/processing/training-output``: the train job's ``output.tar.gz``, a
folder holding it, or the extracted folder with ``tensors/``, ``profiler/``, ``history.json``) and writes
``<--output-dir>/debug.json`` (default ``/opt/ml/processing/debug``), one verdict per rule with its evidence.
``--tensors`` reads the smdebug tensors from another folder: with a managed DebugHookConfig
(``debugger.managed: true``) the hook writes them to ``<S3OutputPath>/<training job name>/debug-output``, not into
``output.tar.gz``:

    {"rules": {"VanishingGradient": {"status": "NoIssuesFound", "evidence": {...}, "blocking": true}, ...},
     "summary": {"issues_found": ["Overfit"], "blocking_issues_found": 0, ...}}

The quality gate reads ``summary.blocking_issues_found`` (blocking rules that found issues, or that could not
judge: Skipped or Error) and its FailStep message ``summary.blocking_reason`` (JsonGet paths in
``imgclf.schemas``). Every rule parameter has an option ``--<rule>-<parameter>`` (e.g.
``--vanishing-gradient-threshold 0.0000001``); defaults are AWS's (``imgclf.debugger.params``). Exit status 0
whenever debug.json was written, whatever the verdicts (the gate decides); 2 for bad arguments; 1 when the
training output (or ``--tensors``) is missing.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import tarfile
from pathlib import Path

from imgclf import schemas, tracking
from imgclf.debugger import params
from imgclf.debugger.runner import DEFAULT_BLOCKING_RULES, evaluate_training_output

DEFAULT_TRAINING_OUTPUT = "/opt/ml/processing/training-output"
DEFAULT_OUTPUT_DIR = "/opt/ml/processing/debug"


def option_name(rule: str, parameter: str) -> str:
    """``("VanishingGradient", "threshold")`` -> ``"vanishing-gradient-threshold"``."""
    kebab_rule = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "-", rule).lower()
    return f"{kebab_rule}-{parameter.replace('_', '-')}"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser: paths, rule selection, blocking rules, and one option per rule parameter."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--training-output", default=DEFAULT_TRAINING_OUTPUT, help="output.tar.gz or its folder")
    parser.add_argument("--output-dir", default=DEFAULT_OUTPUT_DIR, help="folder for debug.json")
    parser.add_argument("--tensors", default="",
                        help="smdebug tensors folder (default: tensors/ in the training output; managed hook: its "
                             "debug-output folder)")
    parser.add_argument(
        "--blocking-rules",
        default=",".join(DEFAULT_BLOCKING_RULES),
        help="comma-separated rules whose IssuesFound block the model (counted in summary.blocking_issues_found)",
    )
    parser.add_argument("--rules", default="", help="comma-separated rules to run (default: all)")
    for rule, spec in params.PARAMETER_SPECS.items():
        group = parser.add_argument_group(rule)
        for parameter, (kind, default) in spec.items():
            name = option_name(rule, parameter)
            shown = ",".join(default) if isinstance(default, list) else default
            group.add_argument(
                f"--{name}",
                f"--{name.replace('-', '_')}",
                dest=f"{rule}.{parameter}",
                default=None,
                metavar=kind.upper(),
                help=f"default {shown}",
            )
    return parser


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, dict[str, dict]]:
    """Parse the command line into (namespace, ``{rule: {parameter: value}}``); bad values exit with status 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    given: dict[str, dict] = {}
    for key, value in vars(args).items():
        if "." in key and value is not None:
            rule, parameter = key.split(".", 1)
            given.setdefault(rule, {})[parameter] = value
    known = schemas.DEBUGGER_RULES + schemas.PROFILER_RULES
    for option in ("blocking_rules", "rules"):
        names = [n.strip() for n in getattr(args, option).strip().strip('"').split(",") if n.strip()]
        unknown = [n for n in names if n not in known]
        if unknown:
            flag = "--" + option.replace("_", "-")
            parser.error(f"{flag}: unknown rule(s) {', '.join(unknown)}; known: {', '.join(known)}")
        setattr(args, option, names)
    for rule, values in given.items():
        try:
            params.resolve(rule, values)
        except ValueError as error:
            parser.error(str(error))
    return args, given


def main(argv: list[str] | None = None) -> int:
    """Run the rules and write debug.json; prints one line per rule."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("SMDEBUG_LOG_LEVEL", "error")
    args, given = parse_args(argv)
    try:
        report = evaluate_training_output(
            Path(args.training_output), given, blocking_rules=args.blocking_rules, rules=args.rules or None,
            tensors=Path(args.tensors) if args.tensors else None,
        )
    except (FileNotFoundError, tarfile.TarError) as error:  # TarError: an unsafe member refused by filter="data"
        print(f"error: {error}", file=sys.stderr)
        return 1
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    target = output_dir / schemas.DEBUG_FILE
    partial = target.with_suffix(".json.partial")
    partial.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    partial.replace(target)  # atomic: the PropertyFile is either absent or complete
    for rule, result in report["rules"].items():
        evidence = result["evidence"]
        detail = next((evidence[k] for k in ("first", "closest", "reason", "message") if evidence.get(k)), "")
        print(f"rule={rule} status={result['status']} blocking={result['blocking']} {json.dumps(detail)[:200]}")
    summary = report["summary"]
    issues = ",".join(summary["issues_found"]) or "-"
    print(f"issues_found={issues} blocking_issues_found={summary['blocking_issues_found']}")
    if summary["blocking_issues_found"]:
        print(f"blocking: {summary['blocking_reason']}")
    print(f"wrote {target}")
    tracking.log_debug_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
