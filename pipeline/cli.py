"""Command line of the project: ``python -m pipeline <command> [options]``.

Each module of :mod:`pipeline.commands` registers its own sub-commands, so the parts of the project stay apart
(``data``: sample-data; ``aws``: definition, upsert, start, status, schedule, unschedule, estimate, teardown;
``local``: run-local; ``serving``: serve, predict, load). ``python -m pipeline <command> --help`` documents each.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

COMMAND_MODULES = ("data", "aws", "local", "serving", "approval")


class UserError(Exception):
    """A problem the user can fix (bad config, missing file, missing credential): printed without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    """Return the parser with every registered sub-command."""
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"pipeline.commands.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"pipeline.commands.{name}":
                raise
            continue  # that part of the CLI is not built yet
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen command. Returns the process exit status (0 ok, 2 user error)."""
    os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    if not args.verbose:  # one INFO line per HTTP request would bury the results
        logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        return int(args.func(args) or 0)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
