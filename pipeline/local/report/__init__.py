"""``runs/<execution id>/report.html``: one self-contained page about a local pipeline execution.

Sections, in order (each one says "not available" and why when its data is missing, so the page always renders):

1. Steps: the step graph coloured by state, with durations, and a table of steps (type, status, duration,
   cache hit, detail or failure reason) from ``execution.json``; the detail says what each step produced (split
   counts, best trial, epochs, issues found, accuracy, the quality gate's comparisons as evaluated).
2. Data: images per class and split, and every file the split rejected with its reason (``manifest.json``,
   ``rejected.json``).
3. Tuning: every trial's tuned hyperparameters against the objective, best trial marked.
4. Training: train and validation loss and accuracy per epoch, from the train job's ``history.json``.
5. Debugger and profiler rules: each rule's verdict, why it was reached (value against threshold at a step)
   and whether it blocks the quality gate, from ``debug.json``.
6. Utilization: CPU, memory and GPU over time and data-loading vs compute time per step, from the train job's
   ``profiler/`` samples.
7. Evaluation: headline metrics, the confusion matrix and per-class precision, recall, F1 and support from
   ``evaluation.json``.
8. Model package and endpoint: the registered package (``DescribeModelPackage`` fields), the deploy step's
   outputs beside the endpoint's state now (a local endpoint stops when its step ends), and the endpoint's
   answers when ``runs/<id>/endpoint.json`` holds them (``[{"image", "true_label", "predicted", "probability",
   "status"}]``).

Data is found through ``execution.json``: step ``Properties`` give S3 URIs, mapped into the local store
(``store_root``, default: the ``Store`` recorded in execution.json). Plots are matplotlib PNGs embedded as
base64; the page needs no network and no other file.

Modules: :mod:`.data` reads the run, :mod:`.describe` words what it found, :mod:`.graph` lays out the step graph,
:mod:`.plots` draws the figures, :mod:`.page` holds the HTML pieces and :mod:`.sections` builds each section.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.local.report import page
from pipeline.local.report.data import ENDPOINT_ANSWERS_FILE, RunData, Unavailable
from pipeline.local.report.sections import SECTIONS

__all__ = ["ENDPOINT_ANSWERS_FILE", "REPORT_FILE", "write_report"]

REPORT_FILE = "report.html"


def write_report(run_dir: Path, store_root: Path | None = None) -> Path:
    """Write ``<run_dir>/report.html`` for the execution recorded in ``<run_dir>/execution.json``; return its path.

    ``store_root``: the local store folder (default: execution.json's ``Store``). Raises FileNotFoundError when
    ``execution.json`` is missing; every other gap becomes a "not available" note in the page.
    """
    run_dir = Path(run_dir)
    record_path = run_dir / "execution.json"
    if not record_path.is_file():
        raise FileNotFoundError(f"{record_path} not found: pass the folder of one execution, e.g. runs/<id>")
    record = json.loads(record_path.read_text(encoding="utf-8"))
    data = RunData(run_dir, record, Path(store_root) if store_root else None)
    body = [page.header(record)]
    for title, build in SECTIONS:
        try:
            content = build(data)
        except Unavailable as why:
            content = page.unavailable(title.lower(), str(why))
        except Exception as error:  # a malformed file must not cost the whole report
            content = page.unavailable(title.lower(), f"could not be read ({type(error).__name__}: {error})")
        body.append(page.section(title, content))
    title = f"{record.get('PipelineName', 'pipeline')} {record.get('PipelineExecutionId', '')}"
    target = run_dir / REPORT_FILE
    partial = target.with_suffix(".html.partial")
    partial.write_text(page.page(title, body), encoding="utf-8")
    partial.replace(target)
    return target
