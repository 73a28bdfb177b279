"""The report's eight sections, each from :class:`~pipeline.local.report.data.RunData` to HTML; a section whose data
is missing raises :class:`~pipeline.local.report.data.Unavailable` (the page then says why)."""

from __future__ import annotations

import html
import math

from imgclf import schemas
from pipeline.local.report import page, plots
from pipeline.local.report.data import RunData, Unavailable, endpoint_now
from pipeline.local.report.describe import (
    best_trial,
    cache_source,
    in_split_order,
    rule_why,
    short,
    step_detail,
    utc_time,
    why_not_registered,
)
from pipeline.local.report.page import STATUS_COLOURS, WARNING_COLOUR, badge, img, number, table, unavailable
from pipeline.local.status import StepStatus


def steps_section(data: RunData) -> str:
    """The step graph and a table: type, status, duration, cache hit, and what the step produced (or why it
    failed)."""
    steps = data.steps
    if not steps:
        raise Unavailable("execution.json lists no steps")
    rows = []
    for step in steps:
        duration = step.get("DurationSeconds")
        detail = step.get("FailureReason") or step_detail(data, step) or step.get("Detail") or ""
        rows.append([
            html.escape(step["StepName"]), html.escape(step.get("StepType", "")), badge(step.get("StepStatus", "")),
            f"{duration:.1f} s" if isinstance(duration, (int, float)) else "-",
            html.escape(cache_source(step)), html.escape(str(detail))[:300],
        ])  # fmt: skip
    graph = img(plots.plot_step_graph(steps), "step graph")
    return graph + table(["step", "type", "status", "duration", "cache hit", "detail"], rows)


def data_section(data: RunData) -> str:
    """Images per class and split (``manifest.json``) and every file the split rejected (``rejected.json``)."""
    manifest = data.processing_file("manifest.json")
    counts = manifest.get("counts") or {}
    splits = list(in_split_order(manifest.get("totals") or {}))
    if not counts or not splits:
        raise Unavailable("manifest.json holds no counts")
    rows = [[html.escape(name)] + [str(counts[name].get(split, 0)) for split in splits]
            + [str(sum(counts[name].get(split, 0) for split in splits))] for name in manifest.get("classes", counts)]
    totals = manifest["totals"]
    rows.append(["<b>all</b>"] + [f"<b>{totals[split]}</b>" for split in splits] + [f"<b>{sum(totals.values())}</b>"])
    parts = [table(["class", *splits, "all"], rows)]
    notes = [*manifest.get("warnings", [])]
    if manifest.get("empty_classes"):
        notes.append(f"class folders without a usable image (left out): {', '.join(manifest['empty_classes'])}")
    if manifest.get("ignored"):
        notes.append(f"{len(manifest['ignored'])} hidden file(s) ignored")
    parts.extend(page.small(note) for note in notes)
    try:
        rejected = data.processing_file("rejected.json")
    except Unavailable as why:
        parts.append(unavailable("rejected files", str(why)))
    else:
        if rejected:
            rows = [[html.escape(str(item.get("path", ""))), html.escape(str(item.get("reason", "")))]
                    for item in rejected]  # fmt: skip
            parts.append(f"<h3>Rejected files ({len(rejected)})</h3>" + table(["file", "reason"], rows))
        else:
            parts.append(page.small("rejected files: none (every file under a class folder is an image the split "
                                    "could read)"))  # fmt: skip
    return "\n".join(parts)


def tuning_section(data: RunData) -> str:
    """Every trial's tuned hyperparameters against the objective, best trial marked."""
    tuning = data.steps_of("Tuning")
    if not tuning:
        raise Unavailable("this execution has no tuning step")
    trials = [j for j in tuning[-1].get("Jobs", []) if j.get("TunedHyperParameters")]
    if not trials and cache_source(tuning[-1]):
        raise Unavailable(f"tuning step {tuning[-1]['StepName']} was a cache hit ({cache_source(tuning[-1])}): its "
                          "trials are in that execution's report")  # fmt: skip
    if not trials:
        raise Unavailable(f"tuning step {tuning[-1]['StepName']} recorded no trials ({tuning[-1].get('StepStatus')})")
    scored = [t for t in trials if isinstance(t.get("ObjectiveValue"), (int, float))]
    best = best_trial(trials)
    names = sorted({k for t in trials for k in t["TunedHyperParameters"]})
    rows = []
    for trial in sorted(trials, key=lambda t: -(t.get("ObjectiveValue") or -math.inf)):
        mark = " &#9733; best" if trial is best else ""
        value = trial.get("ObjectiveValue")
        rows.append([html.escape(str(trial.get("JobName", ""))) + mark, badge(trial.get("Status", ""))]
                    + [html.escape(short(trial["TunedHyperParameters"].get(n, ""))) for n in names]
                    + [f"{value:.4f}" if isinstance(value, (int, float)) else "-"])  # fmt: skip
    plot = (img(plots.plot_tuning(scored, names, best), "tuning trials") if scored
            else "<p>no trial has an objective</p>")  # fmt: skip
    return plot + table(["trial", "status", *names, "objective"], rows)


def training_section(data: RunData) -> str:
    """Train and validation loss and accuracy per epoch, from the train job's ``history.json``."""
    history = data.output_json("history.json")
    epochs = history.get("epochs") if isinstance(history, dict) else None
    if not epochs:
        raise Unavailable("history.json holds no epochs")
    keys = ["train_loss", "validation_loss", "train_accuracy", "validation_accuracy", "lr", "epoch_seconds"]
    rows = [[str(e.get("epoch", i + 1))] + [number(e.get(k)) for k in keys] for i, e in enumerate(epochs)]
    hyper = history.get("hyperparameters") or {}
    shown = ", ".join(f"{html.escape(str(k))}={html.escape(short(v))}" for k, v in sorted(hyper.items()))
    hyper_html = f"<p class='small'>{shown}</p>" if hyper else ""
    return img(plots.plot_history(epochs), "loss and accuracy per epoch") + hyper_html + table(["epoch", *keys], rows)


def rules_section(data: RunData) -> str:
    """Each Debugger/profiler rule's verdict, why it was reached and whether it blocks the quality gate
    (``debug.json``)."""
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
        colour = STATUS_COLOURS.get(status) if blocking or status != schemas.ISSUES_FOUND else WARNING_COLOUR
        rows.append([
            html.escape(name), badge(status, colour), html.escape(rule_why(status, evidence)),
            ("<b>yes</b>: fails the quality gate" if status == schemas.ISSUES_FOUND else "yes")
            if blocking else "no (a warning)" if status == schemas.ISSUES_FOUND else "no",
            page.evidence_html(status, evidence),
        ])  # fmt: skip
    return head + table(["rule", "verdict", "why", "blocks the gate", "evidence"], rows)


def utilization_section(data: RunData) -> str:
    """CPU, memory and GPU over time and data-loading vs compute time per step (the train job's ``profiler/``)."""
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
    return img(plots.plot_utilization(samples, steps), "utilization") + note


def evaluation_section(data: RunData) -> str:
    """Headline metrics, the confusion matrix and per-class precision, recall, F1 and support
    (``evaluation.json``)."""
    evaluation = data.processing_file(schemas.EVALUATION_FILE)
    metrics = evaluation.get(schemas.METRICS_SECTION) or {}
    head = table(["metric", "value", "standard deviation"],
                 [[html.escape(k), number(v.get("value")), number(v.get("standard_deviation"))]
                  for k, v in metrics.items() if isinstance(v, dict)])  # fmt: skip
    parts = [head]
    matrix = evaluation.get("confusion_matrix") or {}
    if matrix.get("matrix") and matrix.get("labels"):
        parts.append(img(plots.plot_confusion(matrix["labels"], matrix["matrix"]), "confusion matrix"))
    else:
        parts.append(unavailable("confusion matrix", "evaluation.json has no confusion_matrix"))
    per_class = evaluation.get("per_class") or {}
    if per_class:
        rows = [[html.escape(label)] + [number(v.get(k)) for k in ("precision", "recall", "f1", "support")]
                for label, v in per_class.items()]  # fmt: skip
        parts.append(table(["class", "precision", "recall", "F1", "support"], rows))
    else:
        parts.append(unavailable("per-class metrics", "evaluation.json has no per_class"))
    return "\n".join(parts)


def package_section(data: RunData) -> str:
    """The registered package (DescribeModelPackage fields), the deploy step's outputs beside the endpoint's state
    now, and the endpoint's answers (``runs/<id>/endpoint.json``)."""
    parts = []
    registered = [s for s in data.steps_of("RegisterModel") if s.get("StepStatus") == StepStatus.SUCCEEDED]
    if registered:
        properties = registered[-1]["Properties"]
        keys = ["ModelPackageArn", "ModelPackageGroupName", "ModelPackageVersion", "ModelApprovalStatus",
                "CreationTime"]  # fmt: skip
        rows = [[k, html.escape(utc_time(properties[k]) if k == "CreationTime" else str(properties[k]))]
                for k in keys if k in properties]  # fmt: skip
        containers = properties.get("InferenceSpecification", {}).get("Containers", [])
        for i, container in enumerate(containers):
            for k in ("Image", "ModelDataUrl"):
                if k in container:
                    rows.append([f"Containers[{i}].{k}", html.escape(str(container[k]))])
        parts.append("<h3>Registered model package</h3>" + table(["field", "value"], rows))
    else:
        parts.append(unavailable("registered model package", why_not_registered(data)))
    deploy = [s for s in data.steps_of("Lambda") if s.get("Properties")]
    if deploy:
        properties = deploy[-1]["Properties"]
        outputs = properties.get("OutputParameters") or {}
        rows = [[html.escape(k), html.escape(str(v) if v not in ("", None) else "-")
                 + (" (during the deploy step)" if k == "status" else "")] for k, v in outputs.items()]  # fmt: skip
        if outputs.get("endpoint_url"):
            rows.append(["endpoint now", html.escape(endpoint_now(outputs["endpoint_url"],
                                                                  properties.get("ServeCommand")))])  # fmt: skip
        if properties.get("Reason"):
            rows.append(["reason", html.escape(properties["Reason"])])
        parts.append(f"<h3>Deploy step ({badge(deploy[-1].get('StepStatus', ''))})</h3>"
                     + table(["output", "value"], rows))  # fmt: skip
    else:
        parts.append(unavailable("deploy step", "no deploy (Lambda) step ran in this execution"))
    try:
        answers = data.endpoint_answers()
    except Unavailable as why:
        parts.append(unavailable("endpoint answers", str(why)))
    else:
        correct = sum(1 for a in answers if a.get("predicted") == a.get("true_label"))
        rows = [[html.escape(str(a.get("image", ""))), html.escape(str(a.get("true_label", ""))),
                 html.escape(str(a.get("predicted", ""))), number(a.get("probability")),
                 html.escape(str(a.get("status", "")))] for a in answers]  # fmt: skip
        parts.append(f"<h3>Endpoint answers ({correct}/{len(answers)} correct)</h3>"
                     + table(["image", "true label", "predicted", "probability", "HTTP status"], rows))  # fmt: skip
    return "\n".join(parts)


#: (title, builder) in page order; the title's lower-case, dash-joined form is the section's id.
SECTIONS = (
    ("Steps", steps_section),
    ("Data", data_section),
    ("Tuning trials", tuning_section),
    ("Training", training_section),
    ("Debugger and profiler rules", rules_section),
    ("Utilization", utilization_section),
    ("Evaluation", evaluation_section),
    ("Model package and endpoint", package_section),
)
