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
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import json
import math
import tarfile
import urllib.request
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
WARNING_COLOUR = "#ef8f00"


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
        ("Data", _data_section),
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

    def processing_file(self, file_name: str, step_name: str | None = None) -> Any:
        """The JSON ``file_name`` found in any succeeded processing step's outputs (e.g. debug.json), or only in
        ``step_name``'s."""
        searched = []
        for step in self.steps_of("Processing"):
            if step_name is not None and step["StepName"] != step_name:
                continue
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


    def definition(self) -> dict:
        """The definition JSON the execution ran (``<run_dir>/definition.json``), else {}."""
        path = self.run_dir / "definition.json"
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return {}


# -- step details ------------------------------------------------------------------------------------------------
def _step_detail(data: RunData, step: dict) -> str:
    """What the step produced, in one line (empty when nothing can be said); see the module docstring."""
    kind, name = step.get("StepType"), step["StepName"]
    if step.get("StepStatus") != "Succeeded":
        return ""
    try:
        if kind == "Processing":
            return _processing_detail(data, name)
        if kind == "Tuning":
            trials = [j for j in step.get("Jobs", []) if j.get("TunedHyperParameters")]
            scored = [t for t in trials if isinstance(t.get("ObjectiveValue"), (int, float))]
            best = max(scored, key=lambda t: t["ObjectiveValue"]) if scored else None
            done = sum(1 for t in trials if t.get("Status") == "Completed")
            text = f"{len(trials)} trials ({done} completed)"
            return text + (f"; best {best['JobName']}: objective {best['ObjectiveValue']:.4f}" if best else "")
        if kind == "Training":
            epochs = data.output_json("history.json").get("epochs") or []
            if epochs:
                last = epochs[-1]
                return (f"{len(epochs)} epochs; last: validation accuracy {_plain(last.get('validation_accuracy'))}, "
                        f"validation loss {_plain(last.get('validation_loss'))}, train loss "
                        f"{_plain(last.get('train_loss'))}")  # fmt: skip
        if kind == "Condition":
            return _condition_detail(data, step)
    except (Unavailable, OSError, ValueError, KeyError, TypeError, AttributeError):
        return ""
    return ""


def _processing_detail(data: RunData, name: str) -> str:
    for file_name, describe in ((schemas.DEBUG_FILE, _debug_detail), (schemas.EVALUATION_FILE, _evaluation_detail),
                                ("manifest.json", _split_detail)):  # fmt: skip
        try:
            return describe(data.processing_file(file_name, name))
        except Unavailable:
            continue
    return ""


def _in_split_order(totals: dict) -> dict:
    """``{split: count}`` as split.py makes them: train, validation, test (then any other)."""
    order = {name: index for index, name in enumerate(("train", "validation", "test"))}
    return dict(sorted(totals.items(), key=lambda item: order.get(item[0], len(order))))


def _split_detail(manifest: dict) -> str:
    totals = _in_split_order(manifest.get("totals") or {})
    shown = ", ".join(f"{split} {count}" for split, count in totals.items())
    return (f"{sum(totals.values())} images of {len(manifest.get('classes', []))} classes: {shown}; "
            f"rejected {manifest.get('rejected', 0)}")


def _debug_detail(report: dict) -> str:
    summary = report.get("summary", {})
    found = summary.get("issues_found") or []
    return (f"issues found: {', '.join(found) or 'none'}; blocking issues: {summary.get('blocking_issues_found', '?')}"
            + (f"; rule errors: {', '.join(summary['errors'])}" if summary.get("errors") else ""))


def _evaluation_detail(evaluation: dict) -> str:
    metrics = evaluation.get(schemas.METRICS_SECTION) or {}
    shown = [f"{k} {_plain(v.get('value'))}" for k, v in metrics.items() if isinstance(v, dict)][:3]
    return "test " + ", ".join(shown) if shown else ""


_OPERATORS = {"GreaterThanOrEqualTo": ">=", "GreaterThan": ">", "LessThanOrEqualTo": "<=", "LessThan": "<",
              "Equals": "=="}  # fmt: skip


def _condition_detail(data: RunData, step: dict) -> str:
    """``accuracy 0.976 >= AccuracyThreshold 0.9: True; blocking_issues_found 0 == 0: True -> if branch``: the
    ConditionStep's conditions from definition.json, their operands evaluated as the executor did."""
    from pipeline.local import expressions

    spec = next((s for s in data.definition().get("Steps", []) if s.get("Name") == step["StepName"]), None)
    if spec is None:
        return ""
    context = _expression_context(data)
    parts = []
    for condition in spec.get("Arguments", {}).get("Conditions", []):
        operator = _OPERATORS.get(condition.get("Type"))
        if operator is None:
            parts.append(f"{condition.get('Type')}: {expressions.evaluate_condition(condition, context)}")
            continue
        left = expressions.evaluate(condition["LeftValue"], context)
        right = expressions.evaluate(condition["RightValue"], context)
        outcome = expressions.evaluate_condition(condition, context)
        parts.append(f"{_operand(condition['LeftValue'])} {_plain(left)} {operator} "
                     f"{_operand(condition['RightValue'])}{_plain(right)}: {outcome}")  # fmt: skip
    outcome = step.get("Properties", {}).get("Outcome")
    return "; ".join(parts) + (f" (outcome {outcome})" if outcome is not None else "")


def _operand(value: Any) -> str:
    """A short name for a condition operand: a JsonGet's last path part, a parameter's name; '' for a literal."""
    if isinstance(value, dict):
        if "Std:JsonGet" in value:
            path = str(value["Std:JsonGet"].get("Path", ""))
            parts = [p for p in path.split(".") if p not in ("value", METRICS_KEY)]
            return parts[-1] if parts else path
        if "Get" in value and str(value["Get"]).startswith("Parameters."):
            return str(value["Get"]).removeprefix("Parameters.") + " "
    return ""


METRICS_KEY = schemas.METRICS_SECTION


def _expression_context(data: RunData):
    """An expressions.Context over the recorded execution: parameters, step properties, property files."""
    from pipeline.local import expressions

    steps = {s["StepName"]: s for s in data.steps}
    definition = {s.get("Name"): s for s in _all_steps(data.definition().get("Steps", []))}

    def step_properties(name: str) -> dict:
        if name not in steps or not steps[name].get("Properties"):
            raise expressions.ExpressionError(f"step {name} has no recorded properties")
        return steps[name]["Properties"]

    def property_file(step_name: str, file_name: str) -> Any:
        spec = next((p for p in definition.get(step_name, {}).get("PropertyFiles") or []
                     if p["PropertyFileName"] == file_name), None)  # fmt: skip
        if spec is None:
            raise expressions.ExpressionError(f"step {step_name} declares no PropertyFile {file_name!r}")
        outputs = step_properties(step_name).get("ProcessingOutputConfig", {}).get("Outputs", [])
        output = next(o for o in outputs if o.get("OutputName") == spec["OutputName"])
        return json.loads(data.local(f"{output['S3Output']['S3Uri'].rstrip('/')}/{spec['FilePath']}").read_text())

    return expressions.Context(parameters=data.record.get("Parameters") or {}, step_properties=step_properties,
                               property_file=property_file, read_json=lambda uri: json.loads(
                                   data.local(uri).read_text()))  # fmt: skip


def _all_steps(steps: list[dict]) -> list[dict]:
    """Every step of a definition, the ones inside a ConditionStep's branches included."""
    found = []
    for step in steps:
        found.append(step)
        arguments = step.get("Arguments", {}) if step.get("Type") == "Condition" else {}
        found.extend(_all_steps(arguments.get("IfSteps", []) + arguments.get("ElseSteps", [])))
    return found


def _plain(value: Any) -> str:
    """A number as the report shows it (4 significant digits for small floats, 4 decimals otherwise)."""
    return html.unescape(_number(value))


# -- sections ----------------------------------------------------------------------------------------------------
def _steps_section(data: RunData) -> str:
    steps = data.steps
    if not steps:
        raise Unavailable("execution.json lists no steps")
    rows = []
    for step in steps:
        duration = step.get("DurationSeconds")
        detail = step.get("FailureReason") or _step_detail(data, step) or step.get("Detail") or ""
        rows.append([
            html.escape(step["StepName"]), html.escape(step.get("StepType", "")), _badge(step.get("StepStatus", "")),
            f"{duration:.1f} s" if isinstance(duration, (int, float)) else "-",
            html.escape(_cache_source(step)), html.escape(str(detail))[:300],
        ])  # fmt: skip
    table = _table(["step", "type", "status", "duration", "cache hit", "detail"], rows)
    return _img(_plot_step_graph(steps), "step graph") + table


def _data_section(data: RunData) -> str:
    manifest = data.processing_file("manifest.json")
    counts = manifest.get("counts") or {}
    splits = list(_in_split_order(manifest.get("totals") or {}))
    if not counts or not splits:
        raise Unavailable("manifest.json holds no counts")
    rows = [[html.escape(name)] + [str(counts[name].get(split, 0)) for split in splits]
            + [str(sum(counts[name].get(split, 0) for split in splits))] for name in manifest.get("classes", counts)]
    totals = manifest["totals"]
    rows.append(["<b>all</b>"] + [f"<b>{totals[split]}</b>" for split in splits] + [f"<b>{sum(totals.values())}</b>"])
    parts = [_table(["class", *splits, "all"], rows)]
    notes = [*manifest.get("warnings", [])]
    if manifest.get("empty_classes"):
        notes.append(f"class folders without a usable image (left out): {', '.join(manifest['empty_classes'])}")
    if manifest.get("ignored"):
        notes.append(f"{len(manifest['ignored'])} hidden file(s) ignored")
    parts.extend(f"<p class='small'>{html.escape(note)}</p>" for note in notes)
    try:
        rejected = data.processing_file("rejected.json")
    except Unavailable as why:
        parts.append(_unavailable("rejected files", str(why)))
    else:
        if rejected:
            rows = [[html.escape(str(item.get("path", ""))), html.escape(str(item.get("reason", "")))]
                    for item in rejected]  # fmt: skip
            parts.append(f"<h3>Rejected files ({len(rejected)})</h3>" + _table(["file", "reason"], rows))
        else:
            parts.append("<p class='small'>rejected files: none (every file under a class folder is an image the "
                         "split could read)</p>")
    return "\n".join(parts)


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
                    + [html.escape(_short(trial["TunedHyperParameters"].get(n, ""))) for n in names]
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
    shown = ", ".join(f"{html.escape(str(k))}={html.escape(_short(v))}" for k, v in sorted(hyper.items()))
    hyper_html = f"<p class='small'>{shown}</p>" if hyper else ""
    return _img(_plot_history(epochs), "loss and accuracy per epoch") + hyper_html + _table(["epoch", *keys], rows)


def _short(value: Any) -> str:
    """A hyperparameter as a reader wants it: ``'"0.051392370149008416"'`` -> ``0.05139``; other text unchanged."""
    text = str(value).strip('"')
    try:
        number = float(text)
    except ValueError:
        return text
    if number.is_integer() and "." not in text and "e" not in text.lower():
        return text
    return f"{number:.4g}"


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
        status = result.get("status", "")
        blocking = bool(result.get("blocking"))
        # a non-blocking IssuesFound is a warning (amber): red is kept for what stops the pipeline
        colour = STATUS_COLOURS.get(status) if blocking or status != schemas.ISSUES_FOUND else WARNING_COLOUR
        rows.append([
            html.escape(name), _badge(status, colour), html.escape(_why(status, evidence)),
            ("<b>yes</b>: fails the quality gate" if status == schemas.ISSUES_FOUND else "yes")
            if blocking else "no (a warning)" if status == schemas.ISSUES_FOUND else "no",
            _evidence_html(status, evidence),
        ])  # fmt: skip
    return head + _table(["rule", "verdict", "why", "blocks the gate", "evidence"], rows)


def _why(status: str, evidence: dict) -> str:
    """One sentence on why the rule reached ``status``: the first violation (or the closest call) as value against
    threshold at a step, or the reason a rule could not judge."""
    focus = evidence.get("first") if status == schemas.ISSUES_FOUND else evidence.get("closest")
    if not focus and "value" in evidence and "threshold" in evidence:  # rules that judge one aggregate value
        focus = evidence
    for key in ("reason", "message"):
        if not focus and evidence.get(key):
            return str(evidence[key])
    if not focus:
        return ""
    where = f"at step {focus['step']}" if "step" in focus else ""
    if focus.get("mode"):
        where += f" ({focus['mode']}" + (f" step {focus['mode_step']})" if "mode_step" in focus else ")")
    what = str(focus.get("tensor") or focus.get("check") or "value")
    value, threshold = focus.get("value"), focus.get("threshold")
    if "decrease_percent" in focus:  # LossNotDecreasing: the change of the window mean is what is judged
        change = focus["decrease_percent"]
        moved = f"fell {_plain(change)}%" if change >= 0 else f"rose {_plain(-change)}%"
        return f"{what} window mean {moved} (needs to fall more than {_plain(threshold)}%) {where}".strip()
    if status == schemas.ISSUES_FOUND:
        text = f"{what} {_plain(value)} crossed the threshold {_plain(threshold)} {where}".strip()
    else:
        text = f"closest call: {what} {_plain(value)} against threshold {_plain(threshold)} {where}".strip()
    if focus.get("issue"):
        text += f": {focus['issue']}"
    if evidence.get("violations"):
        text += f" ({evidence['violations']} violation(s))"
    return text


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
        rows = [[k, html.escape(_time(properties[k]) if k == "CreationTime" else str(properties[k]))]
                for k in keys if k in properties]  # fmt: skip
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
        rows = [[html.escape(k), html.escape(str(v)) + (" (during the deploy step)" if k == "status" else "")]
                for k, v in outputs.items()]  # fmt: skip
        if outputs.get("endpoint_url"):
            rows.append(["endpoint now", html.escape(_endpoint_now(outputs["endpoint_url"],
                                                                   deploy[-1]["Properties"].get("ServeCommand")))])
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


def _time(value: Any) -> str:
    """An epoch number (seconds, as DescribeModelPackage's JSON holds it) as UTC ISO 8601; text unchanged."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return datetime.datetime.fromtimestamp(value, tz=datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return str(value)


def _endpoint_now(url: str, serve_command: str | None) -> str:
    """The local endpoint's state when the report is written: GET /ping on loopback (1 s), as SageMaker's health
    check does; a local endpoint stops when its deploy step ends, so this usually says it is stopped."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/ping", timeout=1.0) as response:  # noqa: S310 (loopback)
            if response.status == 200:
                return f"InService: {url} answers /ping"
    except OSError:
        pass
    again = f"; serve it again with: {serve_command}" if serve_command else ""
    return f"stopped: {url} does not answer /ping (a local endpoint stops with its step){again}"


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
    """Steps left to right by dependency depth; within a column, ordered by their parents' rows (fewer crossings).
    Arrows run from the right edge of a parent's box to the left edge of its child's: anchored to the labels and
    shortened by the box padding (0.4 x 8 pt), so they touch the boxes whatever the label's width."""
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
    row: dict[str, float] = {}
    for x in sorted(layers):  # barycentre ordering: each step near the mean row of its parents
        order = {n: i for i, n in enumerate(layers[x])}
        layers[x].sort(key=lambda n: (sum(row[p] for p in parents[n]) / len(parents[n]) if parents[n] else 0.0,
                                      order[n]))  # fmt: skip
        for i, name in enumerate(layers[x]):
            row[name] = (len(layers[x]) - 1) / 2 - i
    tallest = max(len(v) for v in layers.values())
    fig, ax = _figure(max(len(layers) * 2.3, 6), max(tallest * 1.0, 2.0))
    ax.set_xlim(-0.7, max(layers) + 0.7)
    ax.set_ylim(-tallest / 2 - 0.1, tallest / 2 + 0.1)
    ax.axis("off")
    by_name = {s["StepName"]: s for s in steps}
    boxes = {}
    for name in names:
        step = by_name[name]
        colour = STATUS_COLOURS.get(step.get("StepStatus", ""), "#607d8b")
        duration = step.get("DurationSeconds")
        took = f" {duration:.0f}s" if isinstance(duration, (int, float)) else ""
        boxes[name] = ax.text(level(name), row[name], f"{name}\n{step.get('StepStatus', '')}{took}", ha="center",
                              va="center", fontsize=8, color="white", zorder=2,
                              bbox={"boxstyle": "round,pad=0.4", "fc": colour, "ec": "none"})  # fmt: skip
    for child, ps in parents.items():
        for parent in ps:
            ax.annotate("", xy=(0, 0.5), xycoords=boxes[child], xytext=(1, 0.5), textcoords=boxes[parent],
                        arrowprops={"arrowstyle": "-|>", "color": "#555", "lw": 1.1, "shrinkA": 3.5, "shrinkB": 3.5,
                                    "connectionstyle": "arc3,rad=0.0"}, zorder=1)  # fmt: skip
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


def _cache_source(step: dict) -> str:
    """``from <execution id>`` for a cache hit (CacheHitResult.SourcePipelineExecutionArn), else empty."""
    source = (step.get("CacheHitResult") or {}).get("SourcePipelineExecutionArn") or ""
    return f"from {source.rsplit('/', 1)[-1]}" if source else ""


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


def _badge(status: str, colour: str | None = None) -> str:
    colour = colour or STATUS_COLOURS.get(status, "#607d8b")
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
