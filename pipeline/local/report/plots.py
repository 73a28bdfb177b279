"""The report's figures, drawn with matplotlib (Agg) and returned as base64 PNG for embedding in the page."""

from __future__ import annotations

import base64
import io
import math

from pipeline.local.report.graph import GraphLayout, layout_step_graph
from pipeline.local.report.page import OTHER_COLOUR, STATUS_COLOURS

#: Pixels per inch of the PNGs: at 96 the page shows them at their natural size (CSS pixels are 1/96 in).
DPI = 96
GRAPH_FONT_SIZE = 9
EDGE_COLOUR = "#555555"
#: How far (inches: two pixels) an arrow's tip reaches under its child's box.
TIP_UNDER_BOX = 2 / DPI


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig, tight: bool = True) -> str:
    buffer = io.BytesIO()
    if tight:
        fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=DPI)
    _pyplot().close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def step_label(step: dict) -> str:
    """A step's box text: its name, then its status and duration ("cached" for a cache hit)."""
    duration = step.get("DurationSeconds")
    if (step.get("CacheHitResult") or {}).get("SourcePipelineExecutionArn"):
        return f"{step['StepName']}\n{step.get('StepStatus', '')} (cached)"
    if not isinstance(duration, (int, float)):
        return f"{step['StepName']}\n{step.get('StepStatus', '')}"
    took = f"{duration:.1f}s" if duration < 10 else f"{duration:.0f}s"
    return f"{step['StepName']}\n{step.get('StepStatus', '')} {took}"


def step_graph_figure(steps: list[dict]):
    """``(figure, layout)``: the steps as boxes coloured by status, laid out by :mod:`.graph` (one data unit is one
    inch of the figure, so arrows end exactly on the boxes' borders)."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    plt = _pyplot()
    fig = plt.figure(dpi=DPI)
    renderer = fig.canvas.get_renderer()

    def label_size(text: str) -> tuple[float, float]:
        probe = fig.text(0, 0, text, fontsize=GRAPH_FONT_SIZE, ha="center", va="center", multialignment="center")
        extent = probe.get_window_extent(renderer)
        probe.remove()
        return extent.width / fig.dpi, extent.height / fig.dpi

    labels = {s["StepName"]: step_label(s) for s in steps}
    layout: GraphLayout = layout_step_graph(steps, label_size, labels)
    fig.set_size_inches(layout.width, layout.height)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, layout.width)
    ax.set_ylim(0, layout.height)
    ax.axis("off")
    status = {s["StepName"]: s.get("StepStatus", "") for s in steps}
    for name, box in layout.boxes.items():
        ax.add_patch(FancyBboxPatch((box.x0, box.y0), box.x1 - box.x0, box.y1 - box.y0, gid=name,
                                    boxstyle="round,pad=0,rounding_size=0.06", linewidth=0, zorder=2,
                                    facecolor=STATUS_COLOURS.get(status[name], OTHER_COLOUR)))  # fmt: skip
        ax.text((box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2, labels[name], ha="center", va="center", gid=name,
                multialignment="center", fontsize=GRAPH_FONT_SIZE, color="white", zorder=3)  # fmt: skip
    for edge in layout.edges:
        xs, ys = zip(*edge.points, strict=True)
        if len(edge.points) > 2:
            ax.add_line(Line2D(xs[:-1], ys[:-1], color=EDGE_COLOUR, linewidth=1.1, zorder=1))
        # the head's sharp tip ends under the box (drawn above the arrows): its anti-aliased last pixel would
        # otherwise read as a gap between arrow and box
        (x0, y0), (x1, y1) = edge.points[-2], edge.points[-1]
        length = math.hypot(x1 - x0, y1 - y0) or 1.0
        tip = (x1 + (x1 - x0) / length * TIP_UNDER_BOX, y1 + (y1 - y0) / length * TIP_UNDER_BOX)
        ax.add_patch(FancyArrowPatch(edge.points[-2], tip, arrowstyle="-|>", mutation_scale=10,
                                     shrinkA=0, shrinkB=0, color=EDGE_COLOUR, linewidth=1.1, zorder=1,
                                     gid=f"{edge.parent}->{edge.child}"))  # fmt: skip
        if edge.branch:
            ax.text(x0 + (x1 - x0) * 0.55, y0 + (y1 - y0) * 0.55, edge.branch, fontsize=7, color=EDGE_COLOUR,
                    ha="center", va="center", zorder=1.5,
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none"})  # fmt: skip
    return fig, layout


def plot_step_graph(steps: list[dict]) -> str:
    fig, _ = step_graph_figure(steps)
    return _png(fig, tight=False)


def plot_tuning(trials: list[dict], names: list[str], best: dict | None) -> str:
    """One panel per tuned hyperparameter: its value against the objective, the best trial starred."""
    plt = _pyplot()
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


def plot_history(epochs: list[dict]) -> str:
    """Loss and accuracy per epoch, train and validation."""
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
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


def plot_utilization(samples: list[dict], steps: list[dict]) -> str:
    """CPU, memory and GPU % over time; below it, data-loading and compute time per training step."""
    plt = _pyplot()
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
        draw_step_times(axes[1][0], steps)
    return _png(fig)


def draw_step_times(ax, steps: list[dict]) -> None:
    """Data-loading and compute milliseconds per training step (``steps``: the profiler's ``data_seconds`` and
    ``compute_seconds`` per step) on a symlog axis, labelled at 1, 2, 3 and 5 times each power of ten."""
    from matplotlib.ticker import FormatStrFormatter, MaxNLocator, SymmetricalLogLocator

    index = [s.get("step", i) for i, s in enumerate(steps)]
    ax.plot(index, [s["data_seconds"] * 1000 for s in steps], label="data loading (ms)")
    ax.plot(index, [s["compute_seconds"] * 1000 for s in steps], label="compute (ms)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("training step")
    ax.set_ylabel("milliseconds")
    ax.set_yscale("symlog", linthresh=1)
    # symlog labels powers of ten only: a run whose steps all take 10-100 ms would show no number at all
    ax.yaxis.set_major_locator(SymmetricalLogLocator(base=10, linthresh=1, subs=(1, 2, 3, 5)))
    ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def plot_confusion(labels: list[str], matrix: list[list[int]]) -> str:
    """The confusion matrix (rows: true label, columns: predicted), counts written in the cells."""
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    values = np.asarray(matrix, dtype=float)
    size = max(3.5, 0.45 * len(labels) + 1.5)
    fig, ax = _pyplot().subplots(figsize=(size + 1, size))
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
    fig.colorbar(image, ax=ax, fraction=0.046).ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts
    return _png(fig)
