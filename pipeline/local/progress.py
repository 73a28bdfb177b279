"""The console side of ``run-local``: a live table of steps (status, time, epoch or trial detail) and job logs.

On a terminal a ``rich`` Live table redraws in place while job log lines scroll above it; elsewhere (pipes, files,
and CI, where ``CI`` is set as GitHub Actions, GitLab CI, CircleCI and Travis set it) each step change is one plain
line, and no line is ever wrapped, so paths, ARNs and URLs stay whole and copyable. Job log lines are prefixed with
the job name; ``logs=False`` hides them (they are always in ``runs/<id>/jobs/<job>.log``).
"""

from __future__ import annotations

import os
import threading
import time

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from pipeline.cli import make_console
from pipeline.local.status import StepStatus

STYLES = {
    StepStatus.SUCCEEDED: "green",
    StepStatus.FAILED: "bold red",
    StepStatus.STOPPED: "yellow",
    StepStatus.EXECUTING: "cyan",
    StepStatus.SKIPPED: "dim",
    StepStatus.NOT_STARTED: "dim",
}


def in_ci() -> bool:
    """True when ``CI`` is set to anything but false/0 (CI services set ``CI=true``): print plain lines there."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


class ProgressDisplay:
    """Receives ``echo(job, line)`` and ``on_event(step, record)`` from the executor; use as a context manager."""

    def __init__(
        self, step_names: list[str], step_types: dict[str, str], *, logs: bool = True, console: Console | None = None
    ):
        self.console = console or make_console()
        self.logs = logs
        self.rows = {
            name: {"StepStatus": StepStatus.NOT_STARTED, "StepType": step_types.get(name, ""), "Detail": ""}
            for name in step_names
        }
        self.started: dict[str, float] = {}
        self.lock = threading.Lock()
        self.live = (
            Live(
                self._table(), console=self.console, refresh_per_second=4, transient=False, get_renderable=self._table
            )
            if self.console.is_terminal and not in_ci()
            else None
        )

    def _table(self) -> Table:
        table = Table(title="run-local", expand=False, show_edge=False)
        for column in ("step", "type", "status", "time", "detail"):
            table.add_column(column, overflow="fold" if column == "detail" else "ellipsis")
        for name, row in self.rows.items():
            status = row["StepStatus"]
            if row.get("DurationSeconds") is not None:
                elapsed = f"{row['DurationSeconds']:.1f}s"
            elif status == StepStatus.EXECUTING and name in self.started:
                elapsed = f"{time.monotonic() - self.started[name]:.0f}s"
            else:
                elapsed = ""
            detail = row.get("FailureReason") or row.get("Detail") or ""
            table.add_row(
                name, row["StepType"], f"[{STYLES.get(status, '')}]{status}[/]", elapsed, escape(str(detail)[:160])
            )
        return table

    def echo(self, job: str, line: str) -> None:
        if self.logs:
            self.console.print(f"[dim]{escape(job)}[/] {escape(line)}", highlight=False, soft_wrap=True)

    def on_event(self, step: str, record: dict) -> None:
        with self.lock:
            previous = self.rows.get(step, {}).get("StepStatus")
            self.rows[step] = record
            if record["StepStatus"] == StepStatus.EXECUTING and step not in self.started:
                self.started[step] = time.monotonic()
        if self.live is None and record["StepStatus"] != previous:
            duration = f" in {record['DurationSeconds']:.1f}s" if record.get("DurationSeconds") is not None else ""
            extra = record.get("FailureReason") or record.get("Detail") or ""
            self.console.print(
                f"step {step}: {record['StepStatus']}{duration}" + (f" ({extra})" if extra else ""),
                highlight=False,
                markup=False,
            )

    def __enter__(self) -> ProgressDisplay:
        if self.live is not None:
            self.live.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.live is not None:
            self.live.stop()
