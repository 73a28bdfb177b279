"""The report's HTML: the page around the sections, the header, and the small pieces the sections are made of
(tables, status badges, embedded images, "not available" notes). Text passed in is escaped here unless a
parameter says it is HTML already."""

from __future__ import annotations

import html
import json
from typing import Any

from imgclf import schemas
from pipeline.local.report.describe import plain
from pipeline.local.status import JobStatus, StepStatus

STATUS_COLOURS = {
    StepStatus.SUCCEEDED: "#2e7d32", StepStatus.FAILED: "#c62828", StepStatus.EXECUTING: "#1565c0",
    StepStatus.STOPPING: "#6d4c41", StepStatus.STOPPED: "#6d4c41", StepStatus.SKIPPED: "#9e9e9e",
    StepStatus.NOT_STARTED: "#bdbdbd",
    JobStatus.COMPLETED: "#2e7d32", JobStatus.IN_PROGRESS: "#1565c0",  # Failed, Stopping, Stopped: as a step's
    schemas.ISSUES_FOUND: "#c62828", schemas.NO_ISSUES_FOUND: "#2e7d32", schemas.ERROR: "#ef6c00",
    schemas.NOT_APPLICABLE: "#757575", schemas.SKIPPED: "#9e9e9e",
}  # fmt: skip
#: A status without a colour of its own.
OTHER_COLOUR = "#607d8b"
#: A non-blocking IssuesFound: a warning, so that red is kept for what stops the pipeline.
WARNING_COLOUR = "#ef8f00"


def page(title: str, body: list[str]) -> str:
    return _PAGE.format(title=html.escape(title), style=_STYLE, body="\n".join(body))


def header(record: dict) -> str:
    """The execution's name, id, status, times, failure reason, MLflow run and parameters."""
    status = record.get("PipelineExecutionStatus", "")
    parameters = record.get("Parameters") or {}
    rows = [[html.escape(str(k)), html.escape(str(v))] for k, v in sorted(parameters.items())]
    reason = f"<p class='fail'>{html.escape(record['FailureReason'])}</p>" if record.get("FailureReason") else ""
    return (f"<h1>{html.escape(record.get('PipelineName', 'pipeline'))} &mdash; execution "
            f"{html.escape(str(record.get('PipelineExecutionId', '')))} {badge(status)}</h1>"
            f"<p class='small'>started {html.escape(str(record.get('CreationTime', '-')))}, ended "
            f"{html.escape(str(record.get('EndTime', '-')))}</p>{reason}{_mlflow_line(record)}"
            + (f"<details><summary>parameters ({len(rows)})</summary>{table(['parameter', 'value'], rows)}</details>"
               if rows else ""))  # fmt: skip


def _mlflow_line(record: dict) -> str:
    """Which MLflow run holds this execution (docs/tracking.md), when it was tracked."""
    run = record.get("MLflow") or {}
    if not run.get("RunId"):
        return ""
    return (f"<p class='small'>MLflow run {html.escape(run['RunId'])} in experiment "
            f"{html.escape(str(run.get('ExperimentName', '')))} ({html.escape(str(run.get('TrackingUri', '')))}); "
            "open it with <code>python -m pipeline tracking-ui</code></p>")


def section(title: str, content_html: str) -> str:
    anchor = title.lower().replace(" ", "-")
    return f"<section id='{anchor}'><h2>{html.escape(title)}</h2>\n{content_html}\n</section>"


def unavailable(what: str, why: str) -> str:
    return f"<p class='na'>{html.escape(what)}: not available &mdash; {html.escape(why)}</p>"


def badge(status: str, colour: str | None = None) -> str:
    colour = colour or STATUS_COLOURS.get(status, OTHER_COLOUR)
    return f"<span class='badge' style='background:{colour}'>{html.escape(status or '?')}</span>"


def img(png_base64: str, alt: str) -> str:
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{png_base64}'>"


def table(headers: list[str], rows_html: list[list[str]]) -> str:
    """A table of ``headers`` (text) over ``rows_html`` (cells that are HTML already)."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows_html)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def number(value: Any) -> str:
    """:func:`~pipeline.local.report.describe.plain`, escaped."""
    return html.escape(plain(value))


def small(text: str) -> str:
    return f"<p class='small'>{html.escape(text)}</p>"


_EVIDENCE_KEYS = ("step", "mode", "mode_step", "tensor", "value", "threshold", "check", "issue", "basis", "reason",
                  "message")  # fmt: skip


def evidence_html(status: str, evidence: dict) -> str:
    """A rule's evidence: the key facts first (step, tensor, value, threshold), then all of it folded away."""
    focus = evidence.get("first") or evidence.get("closest") or {}
    label = {schemas.ISSUES_FOUND: "first violation", schemas.NO_ISSUES_FOUND: "closest call"}.get(status, "")
    facts = {k: focus[k] for k in _EVIDENCE_KEYS if k in focus}
    facts.update({k: evidence[k] for k in ("value", "threshold", "basis", "reason", "message") if k in evidence
                  and k not in facts})  # fmt: skip
    if "violations" in evidence:
        facts["violations"] = evidence["violations"]
    if "evaluations" in evidence:
        facts["evaluations"] = evidence["evaluations"]
    shown = "; ".join(f"<b>{html.escape(k)}</b> {number(v) if isinstance(v, (int, float)) else html.escape(str(v))}"
                      for k, v in facts.items())  # fmt: skip
    prefix = f"<span class='small'>{label}:</span> " if label and focus else ""
    full = html.escape(json.dumps(evidence, indent=1, default=str))
    return f"{prefix}{shown}<details><summary>all evidence</summary><pre>{full}</pre></details>"


_STYLE = """
body { font-family: -apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif; margin: 24px auto;
       max-width: 1100px; color: #212121; line-height: 1.4; padding: 0 16px; }
h1 { font-size: 22px; } h2 { font-size: 18px; border-bottom: 2px solid #e0e0e0; padding-bottom: 4px; margin-top: 28px; }
h3 { font-size: 15px; margin-bottom: 6px; }
table { border-collapse: collapse; margin: 8px 0 12px; font-size: 13px; }
th, td { border: 1px solid #e0e0e0; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f5f5f5; }
img { max-width: 100%; display: block; margin: 8px 0; }
.badge { color: white; border-radius: 10px; padding: 1px 8px; font-size: 12px; white-space: nowrap; }
.small { color: #616161; font-size: 12px; }
.na { color: #757575; font-style: italic; }
.fail { color: #c62828; }
pre { font-size: 11px; background: #fafafa; padding: 6px; max-height: 260px; overflow: auto; }
details summary { cursor: pointer; color: #1565c0; font-size: 12px; }
"""

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>{style}</style></head>
<body>
{body}
</body></html>
"""
