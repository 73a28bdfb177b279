"""Command line of the project: ``python -m pipeline <command> [options]``.

Each module of :mod:`pipeline.commands` registers its own sub-commands, so the parts of the project stay apart
(``data``: sample-data; ``aws``: definition, upsert, start, status, schedule, unschedule, estimate, teardown;
``local``: run-local; ``serving``: serve, predict, load; ``tracking``: tracking-ui).
``python -m pipeline <command> --help`` documents each.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from pipeline.errors import UserError

COMMAND_MODULES = ("data", "aws", "local", "serving", "tracking", "approval")


def make_console():
    """The ``rich`` Console of every command's output. Off a terminal (a pipe, a file, a CI log) it never wraps:
    rich would fold lines and table cells at 80 columns, in the middle of a path, an ARN or a URL; tables take their
    natural width instead. On a terminal, long lines are left to the terminal."""
    from rich.console import Console

    console = Console(soft_wrap=True)
    if not console.is_terminal:
        console.width = max(console.width, 1000)
    return console


def build_parser() -> argparse.ArgumentParser:
    """Return the parser with every registered sub-command."""
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"pipeline.commands.{name}").register(subparsers)
    _describe(subparsers)
    return parser


def _describe(subparsers) -> None:
    """Give every sub-command without a description its one-line help as description, so that
    ``python -m pipeline <command> --help`` always says what the command does."""
    helps = {action.dest: action.help for action in subparsers._choices_actions}
    for name, sub in subparsers.choices.items():
        if not sub.description and helps.get(name):
            text = helps[name]
            sub.description = text[0].upper() + text[1:] + ("" if text.endswith(".") else ".")


def configure_logging(verbose: bool) -> None:
    """INFO lines (DEBUG with ``--verbose``) as bare messages, less the libraries' chatter. The one place the CLI
    sets library log levels; it runs before any command imports the SageMaker SDK or boto3.

    - ``sagemaker.config``: the SDK's logger prints "Not applying SDK defaults" INFO lines to stdout when the SDK is
      imported, unless the logger already has a level and a handler; they would corrupt
      ``python -m pipeline definition > definition.json``. (pipeline/session.py sets the same for library use.)
    - ``botocore``, ``boto3``, ``s3transfer`` at INFO even under ``--verbose``: their DEBUG records print every
      request's headers, the session token (X-Amz-Security-Token) and access key id among them, so no log may hold
      them (docs/security.md).
    - ``httpx`` (without ``--verbose``): one INFO line per HTTP request would bury the results.
    - ``matplotlib``: its "generated new fontManager" (its first import on a machine) says nothing to a user.
    """
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s")
    sdk_config = logging.getLogger("sagemaker.config")
    sdk_config.setLevel(logging.WARNING)
    if not sdk_config.handlers:
        sdk_config.addHandler(logging.NullHandler())
    for name in ("botocore", "boto3", "s3transfer"):
        logging.getLogger(name).setLevel(logging.INFO)
    if not verbose:
        logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("matplotlib").setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen command. Returns the process exit status (0 ok, 2 user error)."""
    os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
