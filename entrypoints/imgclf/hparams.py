"""Argument parsing for the scripts, tolerant of how SageMaker passes hyperparameters.

SageMaker's training toolkit passes each hyperparameter as ``--key value``; values of categorical tuning ranges
may arrive JSON-quoted (``'"64"'``), and keys may be spelt with ``-`` or ``_``.
"""

from __future__ import annotations

import argparse
import json
import os


def unquote(value: str) -> str:
    """Strip one layer of JSON string quoting: ``'"64"'`` -> ``'64'``; other values are returned unchanged."""
    text = str(value).strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        try:
            decoded = json.loads(text)
        except json.JSONDecodeError:
            return text
        return str(decoded)
    return text


def quoted(kind):
    """Wrap an argparse ``type`` so JSON-quoted values are accepted: ``quoted(int)('"64"') == 64``."""

    def parse(value: str):
        text = unquote(value)
        try:
            return kind(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(f"{text!r} is not a valid {getattr(kind, '__name__', kind)}") from error

    parse.__name__ = getattr(kind, "__name__", "value")
    return parse


def boolean(value: str) -> bool:
    """Parse ``true/false/1/0/yes/no`` (any case, JSON-quoted or not)."""
    text = unquote(value).lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{value!r} is not a boolean: use true or false")


def add(parser: argparse.ArgumentParser, name: str, **kwargs) -> None:
    """Add ``--name`` with its ``-``/``_`` twin spelling (``--batch-size`` and ``--batch_size``)."""
    dashed, underscored = f"--{name.replace('_', '-')}", f"--{name.replace('-', '_')}"
    flags = [dashed] if dashed == underscored else [dashed, underscored]
    parser.add_argument(*flags, **kwargs)


def env_path(variable: str, default: str) -> str:
    """The path in environment ``variable`` (SageMaker's ``SM_*``), else the container default."""
    return os.environ.get(variable) or default
