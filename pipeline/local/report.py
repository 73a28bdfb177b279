"""``runs/<execution id>/report.html``: one self-contained page about a local pipeline execution.

Sections, in order (each one says "not available" and why when its data is missing, so the page always renders):

1. Steps: the step graph coloured by state, with durations, and a table of steps (type, status, duration,
   cache hit, detail or failure reason) from ``execution.json``.
2. Tuning: every trial's tuned hyperparameters against the objective, best trial marked.
3. Training: train and validation loss and accuracy per epoch, from the train job's ``history.json``.
4. Debugger and profiler rules: each rule's verdict with its evidence (step, tensor, value, threshold) from
   ``debug.json``.
5. Utilization: CPU, memory and GPU over time and data-loading vs compute time per step, from the train job's
   ``profiler/`` samples.
6. Evaluation: headline metrics, the confusion matrix and per-class precision, recall, F1 and support from
   ``evaluation.json``.
7. Model package and endpoint: the registered package (``DescribeModelPackage`` fields), the deploy step's
   outputs, and the endpoint's answers when ``runs/<id>/endpoint.json`` holds them
   (``[{"image", "true_label", "predicted", "probability", "status"}]``).

Data is found through ``execution.json``: step ``Properties`` give S3 URIs, mapped into the local store
(``store_root``, default: the ``Store`` recorded in execution.json). Plots are matplotlib PNGs embedded as
base64; the page needs no network and no other file.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pipeline._entrypoints  # noqa: F401  (puts entrypoints/ on sys.path for the schemas)
from imgclf import schemas
from pipeline.local.store import Store, StoreError

REPORT_FILE = "report.html"
ENDPOINT_ANSWERS_FILE = "endpoint.json"
STATUS_COLOURS = {
    "Succeeded": "#2e7d32", "Failed": "#c62828", "Executing": "#1565c0", "Stopped": "#6d4c41",
    "Skipped": "#9e9e9e", "NotStarted": "#bdbdbd",
    schemas.ISSUES_FOUND: "#c62828", schemas.NO_ISSUES_FOUND: "#2e7d32", schemas.ERROR: "#ef6c00",
    schemas.NOT_APPLICABLE: "#757575", schemas.SKIPPED: "#9e9e9e",
}  # fmt: skip


class Unavailable(Exception):
    """A section's data is missing; the message says why (shown as "not available: <why>")."""


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
    sections = [
        ("Steps", _steps_section),
        ("Tuning trials", _tuning_section),
        ("Training", _training_section),
        ("Debugger and profiler rules", _rules_section),
        ("Utilization", _utilization_section),
        ("Evaluation", _evaluation_section),
        ("Model package and endpoint", _package_section),
    ]
    body = [_header(record)]
    for title, build in sections:
        body.append(_section(title, build, data))
    title = f"{record.get('PipelineName', 'pipeline')} {record.get('PipelineExecutionId', '')}"
    page = _PAGE.format(title=html.escape(title), style=_STYLE, body="\n".join(body))
    target = run_dir / REPORT_FILE
    partial = target.with_suffix(".html.partial")
    partial.write_text(page, encoding="utf-8")
    partial.replace(target)
    return target


# -- finding the data ------------------------------------------------------------------------------------------
class RunData:
    """Reads what the sections need from execution.json, the store and the train job's output.tar.gz."""

    def __init__(self, run_dir: Path, record: dict, store_root: Path | None):
        self.run_dir = run_dir
        self.record = record
        self.steps = record.get("Steps", [])
        root = store_root or (Path(record["Store"]) if record.get("Store") else None)
        self.store = Store(root) if root and Path(root).is_dir() else None
        self._output_members: dict[str, bytes] | None = None

    def steps_of(self, kind: str) -> list[dict]:
        return [s for s in self.steps if s.get("StepType") == kind]

    def local(self, uri: str) -> Path:
        if self.store is None:
            raise Unavailable("the local store is not known (no Store in execution.json and no store_root given)")
        try:
            return self.store.path(uri)
        except StoreError as error:
            raise Unavailable(str(error)) from error

    def processing_file(self, file_name: str) -> dict:
        """The JSON ``file_name`` found in any succeeded processing step's outputs (e.g. debug.json)."""
        searched = []
        for step in self.steps_of("Processing"):
            for output in step.get("Properties", {}).get("ProcessingOutputConfig", {}).get("Outputs", []):
                uri = output.get("S3Output", {}).get("S3Uri")
                if not uri:
                    continue
                path = self.local(uri.rstrip("/") + "/" + file_name)
                searched.append(step["StepName"])
                if path.is_file():
                    return json.loads(path.read_text(encoding="utf-8"))
        where = f"the outputs of {', '.join(sorted(set(searched)))}" if searched else "any finished processing step"
        raise Unavailable(f"no {file_name} in {where}")

    def training_output(self) -> dict[str, bytes]:
        """Members of the train job's output.tar.gz (history.json, profiler/*.jsonl) by normalized name."""
        if self._output_members is not None:
            return self._output_members
        training = [s for s in self.steps_of("Training") if s.get("Properties")]
        if not training:
            raise Unavailable("no training step with properties in this execution")
        properties = training[-1]["Properties"]
        model_uri = properties.get("ModelArtifacts", {}).get("S3ModelArtifacts", "")
        candidates = []
        if model_uri.endswith("model.tar.gz"):
            candidates.append(model_uri[: -len("model.tar.gz")] + "output.tar.gz")
        output_path = properties.get("OutputDataConfig", {}).get("S3OutputPath")
        if output_path and properties.get("TrainingJobName"):
            candidates.append(f"{output_path.rstrip('/')}/{properties['TrainingJobName']}/output/output.tar.gz")
        for uri in candidates:
            path = self.local(uri)
            if path.is_file():
                members = {}
                with tarfile.open(path, "r:*") as archive:
                    for member in archive.getmembers():
                        if member.isfile() and (member.name.endswith((".json", ".jsonl"))):
                            handle = archive.extractfile(member)
                            if handle is not None:
                                members[member.name.removeprefix("./")] = handle.read()
                self._output_members = members
                return members
        looked = ", ".join(candidates) or "-"
        raise Unavailable(f"the train job's output.tar.gz is not in the store (looked for {looked})")

    def output_json(self, name: str) -> Any:
        members = self.training_output()
        if name not in members:
            raise Unavailable(f"{name} is not in the train job's output.tar.gz")
        return json.loads(members[name])

    def output_jsonl(self, name: str) -> list[dict]:
        members = self.training_output()
        if name not in members:
            raise Unavailable(f"{name} is not in the train job's output.tar.gz")
        rows = []
        for line in members[name].decode("utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return rows


# -- sections ----------------------------------------------------------------------------------------------------
def _steps_section(data: RunData) -> str:
    steps = data.steps
    if not steps:
        raise Unavailable("execution.json lists no steps")
    rows = []
    for step in steps:
        duration = step.get("DurationSeconds")
        detail = step.get("FailureReason") or step.get("Detail") or ""
        rows.append([
            html.escape(step["StepName"]), html.escape(step.get("StepType", "")), _badge(step.get("StepStatus", "")),
            f"{duration:.1f} s" if isinstance(duration, (int, float)) else "-",
            "yes" if step.get("CacheHit") else "", html.escape(str(detail))[:300],
        ])  # fmt: skip
    table = _table(["step", "type", "status", "duration", "cache hit", "detail"], rows)
    return _img(_plot_step_graph(steps), "step graph") + table


def _tuning_section(data: RunData) -> str:
    tuning = data.steps_of("Tuning")
    if not tuning:
        raise Unavailable("this execution has no tuning step")
    trials = [j for j in tuning[-1].get("Jobs", []) if j.get("TunedHyperParameters")]
    if not trials:
        raise Unavailable(f"tuning step {tuning[-1]['StepName']} recorded no trials ({tuning[-1].get('StepStatus')})")
    scored = [t for t in trials if isinstance(t.get("ObjectiveValue"), (int, float))]
    best = max(scored, key=lambda t: t["ObjectiveValue"]) if scored else None
    names = sorted({k for t in trials for k in t["TunedHyperParameters"]})
    rows = []
    for trial in sorted(trials, key=lambda t: -(t.get("ObjectiveValue") or -math.inf)):
        mark = " &#9733; best" if trial is best else ""
        value = trial.get("ObjectiveValue")
        rows.append([html.escape(str(trial.get("JobName", ""))) + mark, _badge(trial.get("Status", ""))]
                    + [html.escape(str(trial["TunedHyperParameters"].get(n, "")).strip('"')) for n in names]
                    + [f"{value:.4f}" if isinstance(value, (int, float)) else "-"])  # fmt: skip
    plot = _img(_plot_tuning(scored, names, best), "tuning trials") if scored else "<p>no trial has an objective</p>"
    return plot + _table(["trial", "status", *names, "objective"], rows)


def _training_section(data: RunData) -> str:
    history = data.output_json("history.json")
    epochs = history.get("epochs") if isinstance(history, dict) else None
    if not epochs:
        raise Unavailable("history.json holds no epochs")
    keys = ["train_loss", "validation_loss", "train_accuracy", "validation_accuracy", "lr", "epoch_seconds"]
    rows = [[str(e.get("epoch", i + 1))] + [_number(e.get(k)) for k in keys] for i, e in enumerate(epochs)]
    hyper = history.get("hyperparameters") or {}
    shown = ", ".join(f"{html.escape(str(k))}={html.escape(str(v))}" for k, v in sorted(hyper.items()))
    hyper_html = f"<p class='small'>{shown}</p>" if hyper else ""
    return _img(_plot_history(epochs), "loss and accuracy per epoch") + hyper_html + _table(["epoch", *keys], rows)


def _rules_section(data: RunData) -> str:
    report = data.processing_file(schemas.DEBUG_FILE)
    rules = report.get("rules") or {}
    if not rules:
        raise Unavailable("debug.json holds no rules")
    summary = report.get("summary", {})
    head = (f"<p>issues found: <b>{html.escape(', '.join(summary.get('issues_found', [])) or 'none')}</b>; "
            f"blocking issues: <b>{summary.get('blocking_issues_found', '?')}</b> "
            f"(blocking rules: {html.escape(', '.join(summary.get('blocking_rules', [])) or '-')})</p>")  # fmt: skip
    rows = []
    for name, result in rules.items():
        evidence = result.get("evidence") or {}
        rows.append([
            html.escape(name) + (" <span class='small'>(blocking)</span>" if result.get("blocking") else ""),
            _badge(result.get("status", "")),
            _evidence_html(result.get("status", ""), evidence),
        ])  # fmt: skip
    return head + _table(["rule", "verdict", "evidence"], rows)


def _utilization_section(data: RunData) -> str:
    samples = data.output_jsonl("profiler/system_metrics.jsonl")
    if not samples:
        raise Unavailable("profiler/system_metrics.jsonl holds no samples")
    try:
        steps = data.output_jsonl("profiler/step_timings.jsonl")
    except Unavailable:
        steps = []
    gpus = sorted({g["index"] for s in samples for g in s.get("gpus") or []})
    shown = gpus or "none (CPU-only machine)"
    note = f"<p class='small'>{len(samples)} samples; GPUs: {shown}; {len(steps)} timed steps</p>"
    return _img(_plot_utilization(samples, steps), "utilization") + note


def _evaluation_section(data: RunData) -> str:
    evaluation = data.processing_file(schemas.EVALUATION_FILE)
    metrics = evaluation.get(schemas.METRICS_SECTION) or {}
    head = _table(["metric", "value", "standard deviation"],
                  [[html.escape(k), _number(v.get("value")), _number(v.get("standard_deviation"))]
                   for k, v in metrics.items() if isinstance(v, dict)])  # fmt: skip
    parts = [head]
    matrix = evaluation.get("confusion_matrix") or {}
    if matrix.get("matrix") and matrix.get("labels"):
        parts.append(_img(_plot_confusion(matrix["labels"], matrix["matrix"]), "confusion matrix"))
    else:
        parts.append(_unavailable("confusion matrix", "evaluation.json has no confusion_matrix"))
    per_class = evaluation.get("per_class") or {}
    if per_class:
        rows = [[html.escape(label)] + [_number(v.get(k)) for k in ("precision", "recall", "f1", "support")]
                for label, v in per_class.items()]  # fmt: skip
        parts.append(_table(["class", "precision", "recall", "F1", "support"], rows))
    else:
        parts.append(_unavailable("per-class metrics", "evaluation.json has no per_class"))
    return "\n".join(parts)


def _package_section(data: RunData) -> str:
    parts = []
    registered = [s for s in data.steps_of("RegisterModel") if s.get("StepStatus") == "Succeeded"]
    if registered:
        properties = registered[-1]["Properties"]
        keys = ["ModelPackageArn", "ModelPackageGroupName", "ModelPackageVersion", "ModelApprovalStatus",
                "CreationTime"]  # fmt: skip
        rows = [[k, html.escape(str(properties[k]))] for k in keys if k in properties]
        containers = properties.get("InferenceSpecification", {}).get("Containers", [])
        for i, container in enumerate(containers):
            for k in ("Image", "ModelDataUrl"):
                if k in container:
                    rows.append([f"Containers[{i}].{k}", html.escape(str(container[k]))])
        parts.append("<h3>Registered model package</h3>" + _table(["field", "value"], rows))
    else:
        reason = _why_not_registered(data)
        parts.append(_unavailable("registered model package", reason))
    deploy = [s for s in data.steps_of("Lambda") if s.get("Properties")]
    if deploy:
        outputs = deploy[-1]["Properties"].get("OutputParameters") or {}
        rows = [[html.escape(k), html.escape(str(v))] for k, v in outputs.items()]
        if deploy[-1]["Properties"].get("Reason"):
            rows.append(["reason", html.escape(deploy[-1]["Properties"]["Reason"])])
        badge = _badge(deploy[-1].get("StepStatus", ""))
        parts.append(f"<h3>Deploy step ({badge})</h3>" + _table(["output", "value"], rows))
    else:
        parts.append(_unavailable("deploy step", "no deploy (Lambda) step ran in this execution"))
    answers_path = data.run_dir / ENDPOINT_ANSWERS_FILE
    if answers_path.is_file():
        answers = json.loads(answers_path.read_text(encoding="utf-8"))
        correct = sum(1 for a in answers if a.get("predicted") == a.get("true_label"))
        rows = [[html.escape(str(a.get("image", ""))), html.escape(str(a.get("true_label", ""))),
                 html.escape(str(a.get("predicted", ""))), _number(a.get("probability")),
                 html.escape(str(a.get("status", "")))] for a in answers]  # fmt: skip
        parts.append(f"<h3>Endpoint answers ({correct}/{len(answers)} correct)</h3>"
                     + _table(["image", "true label", "predicted", "probability", "HTTP status"], rows))  # fmt: skip
    else:
        parts.append(_unavailable("endpoint answers", f"{ENDPOINT_ANSWERS_FILE} is not in {data.run_dir} "
                                  "(written by run-local --demo after it queries the endpoint)"))  # fmt: skip
    return "\n".join(parts)


def _why_not_registered(data: RunData) -> str:
    for step in data.steps_of("Condition"):
        outcome = step.get("Properties", {}).get("Outcome")
        if outcome == "False":
            return f"the quality gate {step['StepName']} evaluated to False"
    steps = data.steps_of("RegisterModel")
    if steps:
        return f"register step {steps[-1]['StepName']} is {steps[-1].get('StepStatus')}"
    return "this execution has no RegisterModel step"


# -- plots -------------------------------------------------------------------------------------------------------
def _figure(width: float, height: float):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height))


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=96)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _plot_step_graph(steps: list[dict]) -> str:
    names = [s["StepName"] for s in steps]
    parents = {s["StepName"]: [d for d in s.get("DependsOn") or [] if d in names] for s in steps}
    for s in steps:
        branch = s.get("Branch")
        if branch and branch[0] in names and branch[0] not in parents[s["StepName"]]:
            parents[s["StepName"]].append(branch[0])
    depth: dict[str, int] = {}

    def level(name: str, seen: tuple = ()) -> int:
        if name not in depth:
            depth[name] = 1 + max((level(p, (*seen, name)) for p in parents[name] if p not in seen), default=-1)
        return depth[name]

    layers: dict[int, list[str]] = {}
    for name in names:
        layers.setdefault(level(name), []).append(name)
    width = max(len(layers) * 2.6, 6)
    height = max(max(len(v) for v in layers.values()) * 1.0, 2.2)
    fig, ax = _figure(width, height)
    position = {}
    for x, layer in layers.items():
        for i, name in enumerate(layer):
            position[name] = (x, (len(layer) - 1) / 2 - i)
    for child, ps in parents.items():
        for parent in ps:
            (x0, y0), (x1, y1) = position[parent], position[child]
            ax.annotate("", xy=(x1 - 0.42, y1), xytext=(x0 + 0.42, y0),
                        arrowprops={"arrowstyle": "->", "color": "#555", "lw": 1.2})  # fmt: skip
    by_name = {s["StepName"]: s for s in steps}
    for name, (x, y) in position.items():
        step = by_name[name]
        colour = STATUS_COLOURS.get(step.get("StepStatus", ""), "#607d8b")
        duration = step.get("DurationSeconds")
        took = f" {duration:.0f}s" if isinstance(duration, (int, float)) else ""
        label = f"{name}\n{step.get('StepStatus', '')}{took}"
        ax.text(x, y, label, ha="center", va="center", fontsize=9, color="white",
                bbox={"boxstyle": "round,pad=0.4", "fc": colour, "ec": "none"})  # fmt: skip
    ax.set_xlim(-0.7, max(layers) + 0.7)
    ax.set_ylim(-max(len(v) for v in layers.values()) / 2 - 0.3, max(len(v) for v in layers.values()) / 2 + 0.3)
    ax.axis("off")
    return _png(fig)


def _plot_tuning(trials: list[dict], names: list[str], best: dict | None) -> str:
    import matplotlib.pyplot as plt

    count = max(len(names), 1)
    fig, axes = plt.subplots(1, count, figsize=(min(3.2 * count, 13), 2.8), squeeze=False)
    for ax, name in zip(axes[0], names, strict=False):
        xs, ys = [], []
        for trial in trials:
            try:
                xs.append(float(str(trial["TunedHyperParameters"].get(name)).strip('"')))
                ys.append(trial["ObjectiveValue"])
            except ValueError:
                continue
        ax.scatter(xs, ys, color="#1565c0", s=22)
        if best is not None:
            try:
                bx = float(str(best["TunedHyperParameters"].get(name)).strip('"'))
                ax.scatter([bx], [best["ObjectiveValue"]], marker="*", s=160, color="#f9a825", edgecolor="black",
                           zorder=3, label="best")  # fmt: skip
            except ValueError:
                pass
        if xs and min(xs) > 0 and max(xs) / min(xs) > 20:
            ax.set_xscale("log")
        ax.set_xlabel(name)
        ax.set_ylabel("objective")
        ax.grid(alpha=0.3)
    axes[0][0].legend(loc="lower right", fontsize=8)
    return _png(fig)


def _plot_history(epochs: list[dict]) -> str:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    x = [e.get("epoch", i + 1) for i, e in enumerate(epochs)]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.2))
    for ax, metric in ((left, "loss"), (right, "accuracy")):
        for split, style in (("train", "-o"), ("validation", "-s")):
            values = [e.get(f"{split}_{metric}") for e in epochs]
            if any(isinstance(v, (int, float)) for v in values):
                ax.plot(x, [v if isinstance(v, (int, float)) else math.nan for v in values], style, label=split, ms=4)
        ax.set_xlabel("epoch")
        if len(x) <= 20:
            ax.set_xticks(x)
            ax.set_xlim(min(x) - 0.5, max(x) + 0.5)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _png(fig)


def _plot_utilization(samples: list[dict], steps: list[dict]) -> str:
    import matplotlib.pyplot as plt

    rows = 2 if steps else 1
    fig, axes = plt.subplots(rows, 1, figsize=(10, 2.8 * rows), squeeze=False)
    ax = axes[0][0]
    start = samples[0].get("timestamp", 0)
    t = [s.get("timestamp", 0) - start for s in samples]
    ax.plot(t, [s.get("cpu_percent") for s in samples], label="CPU %")
    ax.plot(t, [s.get("memory_percent") for s in samples], label="memory %")
    gpus = sorted({g["index"] for s in samples for g in s.get("gpus") or []})
    for index in gpus:
        values = [next((g["utilization"] for g in s.get("gpus") or [] if g["index"] == index), math.nan)
                  for s in samples]  # fmt: skip
        ax.plot(t, values, label=f"GPU {index} %")
    ax.set_ylim(0, 105)
    ax.set_xlabel("seconds since training started")
    ax.set_ylabel("utilization %")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    if steps:
        ax2 = axes[1][0]
        index = [s.get("step", i) for i, s in enumerate(steps)]
        ax2.plot(index, [s["data_seconds"] * 1000 for s in steps], label="data loading (ms)")
        ax2.plot(index, [s["compute_seconds"] * 1000 for s in steps], label="compute (ms)")
        ax2.set_xlabel("training step")
        ax2.set_ylabel("milliseconds")
        ax2.set_yscale("symlog", linthresh=1)
        ax2.grid(alpha=0.3)
        ax2.legend(fontsize=8)
    return _png(fig)


def _plot_confusion(labels: list[str], matrix: list[list[int]]) -> str:
    import numpy as np

    values = np.asarray(matrix, dtype=float)
    size = max(3.5, 0.45 * len(labels) + 1.5)
    fig, ax = _figure(size + 1, size)
    image = ax.imshow(values, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels=labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels=labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    top = values.max() if values.size else 0
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            ax.text(j, i, f"{int(values[i, j])}", ha="center", va="center", fontsize=7,
                    color="white" if values[i, j] > top / 2 else "black")  # fmt: skip
    fig.colorbar(image, ax=ax, fraction=0.046)
    return _png(fig)


# -- html helpers ------------------------------------------------------------------------------------------------
def _header(record: dict) -> str:
    status = record.get("PipelineExecutionStatus", "")
    parameters = record.get("Parameters") or {}
    rows = [[html.escape(str(k)), html.escape(str(v))] for k, v in sorted(parameters.items())]
    reason = f"<p class='fail'>{html.escape(record['FailureReason'])}</p>" if record.get("FailureReason") else ""
    return (f"<h1>{html.escape(record.get('PipelineName', 'pipeline'))} &mdash; execution "
            f"{html.escape(str(record.get('PipelineExecutionId', '')))} {_badge(status)}</h1>"
            f"<p class='small'>started {html.escape(str(record.get('CreationTime', '-')))}, ended "
            f"{html.escape(str(record.get('EndTime', '-')))}</p>{reason}{_mlflow_line(record)}"
            + (f"<details><summary>parameters ({len(rows)})</summary>{_table(['parameter', 'value'], rows)}</details>"
               if rows else ""))  # fmt: skip


def _mlflow_line(record: dict) -> str:
    """Which MLflow run holds this execution (docs/tracking.md), when it was tracked."""
    run = record.get("MLflow") or {}
    if not run.get("RunId"):
        return ""
    return (f"<p class='small'>MLflow run {html.escape(run['RunId'])} in experiment "
            f"{html.escape(str(run.get('ExperimentName', '')))} ({html.escape(str(run.get('TrackingUri', '')))}); "
            "open it with <code>python -m pipeline tracking-ui</code></p>")


def _section(title: str, build: Callable[[RunData], str], data: RunData) -> str:
    try:
        content = build(data)
    except Unavailable as why:
        content = _unavailable(title.lower(), str(why))
    except Exception as error:  # a malformed file must not cost the whole report
        content = _unavailable(title.lower(), f"could not be read ({type(error).__name__}: {error})")
    anchor = title.lower().replace(" ", "-")
    return f"<section id='{anchor}'><h2>{html.escape(title)}</h2>\n{content}\n</section>"


def _unavailable(what: str, why: str) -> str:
    return f"<p class='na'>{html.escape(what)}: not available &mdash; {html.escape(why)}</p>"


def _badge(status: str) -> str:
    colour = STATUS_COLOURS.get(status, "#607d8b")
    return f"<span class='badge' style='background:{colour}'>{html.escape(status or '?')}</span>"


def _img(png_base64: str, alt: str) -> str:
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{png_base64}'>"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _number(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.4g}" if abs(value) < 1e-3 and value != 0 else f"{value:.4f}"
    return html.escape(str(value))


_EVIDENCE_KEYS = ("step", "mode", "mode_step", "tensor", "value", "threshold", "check", "issue", "basis", "reason",
                  "message")  # fmt: skip


def _evidence_html(status: str, evidence: dict) -> str:
    """The key facts first (step, tensor, value, threshold), then the rest folded away."""
    focus = evidence.get("first") or evidence.get("closest") or {}
    label = {"IssuesFound": "first violation", "NoIssuesFound": "closest call"}.get(status, "")
    facts = {k: focus[k] for k in _EVIDENCE_KEYS if k in focus}
    facts.update({k: evidence[k] for k in ("value", "threshold", "basis", "reason", "message") if k in evidence
                  and k not in facts})  # fmt: skip
    if "violations" in evidence:
        facts["violations"] = evidence["violations"]
    if "evaluations" in evidence:
        facts["evaluations"] = evidence["evaluations"]
    shown = "; ".join(f"<b>{html.escape(k)}</b> {_number(v) if isinstance(v, (int, float)) else html.escape(str(v))}"
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
