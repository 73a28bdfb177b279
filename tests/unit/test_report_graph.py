"""The report's step graph: on the project's own pipeline (built from pipeline.yaml as ``run-local`` builds it), arrows
start and end on the boxes' borders, never cross, never pass through a box, and every label fits its box."""

from __future__ import annotations

import json
from collections import Counter
from itertools import combinations

import numpy as np
import pytest

from pipeline.build import definition_json
from pipeline.config import load_config
from pipeline.local.executor import step_graph
from pipeline.local.report.graph import step_edges
from pipeline.local.report.plots import DPI, step_graph_figure

EPSILON = 1e-6  # inches


@pytest.fixture(scope="module")
def project_steps() -> list[dict]:
    """execution.json's ``Steps`` as the executor records them for the project's pipeline (DependsOn includes the
    data dependencies, e.g. evaluate on split): every step succeeded except the gate's else branch."""
    nodes = step_graph(json.loads(definition_json(load_config(local=True))))
    return [{"StepName": n.name, "StepType": n.type, "DependsOn": sorted(n.depends_on),
             "Branch": list(n.branch) if n.branch else None, "DurationSeconds": 12.3,
             "StepStatus": "Skipped" if n.type == "Fail" else "Succeeded"} for n in nodes.values()]  # fmt: skip


def long_edge_steps() -> list[dict]:
    """A graph whose edge other -> last spans three layers, so it must be routed around the boxes between."""
    spec = [("first", []), ("second", ["first"]), ("third", ["second"]), ("other", []), ("last", ["third", "other"])]
    return [{"StepName": name, "StepType": "Processing", "DependsOn": deps, "Branch": None, "StepStatus": "Succeeded"}
            for name, deps in spec]  # fmt: skip


def test_project_graph_shows_the_pipeline_order_without_implied_edges(project_steps):
    kind = {s["StepName"]: s["StepType"] for s in project_steps}
    edges = Counter((kind[p], kind[c]) for c, ps in step_edges(project_steps).items() for p in ps)
    assert edges == Counter({("Processing", "Tuning"): 1, ("Tuning", "Training"): 1, ("Training", "Processing"): 2,
                             ("Processing", "Condition"): 2, ("Condition", "RegisterModel"): 1,
                             ("Condition", "Fail"): 1, ("RegisterModel", "Lambda"): 1,
                             ("Lambda", "Callback"): 1})  # fmt: skip
    # the recorded DependsOn holds more (e.g. evaluate on split), which is what made long edges cross
    assert sum(len(s["DependsOn"]) for s in project_steps) > sum(edges.values())


def _cross(a, b, c, d) -> bool:
    """Whether segments ab and cd have a point in common."""

    def orient(p, q, r):
        value = (q[0] - p[0]) * (r[1] - p[1]) - (q[1] - p[1]) * (r[0] - p[0])
        return 0 if abs(value) < EPSILON else (1 if value > 0 else -1)

    def within(p, q, r):  # r on the line pq: inside the segment's bounding box
        return min(p[0], q[0]) - EPSILON <= r[0] <= max(p[0], q[0]) + EPSILON and \
            min(p[1], q[1]) - EPSILON <= r[1] <= max(p[1], q[1]) + EPSILON  # fmt: skip

    o1, o2, o3, o4 = orient(a, b, c), orient(a, b, d), orient(c, d, a), orient(c, d, b)
    if o1 != o2 and o3 != o4:
        return True
    return any(o == 0 and within(p, q, r) for o, p, q, r in ((o1, a, b, c), (o2, a, b, d), (o3, c, d, a),
                                                              (o4, c, d, b)))  # fmt: skip


def _enters(box, a, b) -> bool:
    """Whether segment ab passes through the inside of ``box`` (sampled finely; boxes are axis-aligned)."""
    for i in range(1001):
        x, y = a[0] + (b[0] - a[0]) * i / 1000, a[1] + (b[1] - a[1]) * i / 1000
        if box.x0 + EPSILON < x < box.x1 - EPSILON and box.y0 + EPSILON < y < box.y1 - EPSILON:
            return True
    return False


@pytest.mark.parametrize("graph", ["project", "long edge"])
def test_arrows_touch_their_boxes_and_never_cross(graph, project_steps):
    steps = project_steps if graph == "project" else long_edge_steps()
    fig, layout = step_graph_figure(steps)
    assert set(layout.boxes) == {s["StepName"] for s in steps}
    for one, two in combinations(layout.boxes.values(), 2):  # boxes apart
        assert one.x1 <= two.x0 or two.x1 <= one.x0 or one.y1 <= two.y0 or two.y1 <= one.y0, (one, two)
    segments = []
    for edge in layout.edges:
        parent, child = layout.boxes[edge.parent], layout.boxes[edge.child]
        (x_start, y_start), (x_end, y_end) = edge.points[0], edge.points[-1]
        assert y_start == pytest.approx(parent.y0) and parent.x0 < x_start < parent.x1, edge  # on the bottom border
        assert y_end == pytest.approx(child.y1) and child.x0 < x_end < child.x1, edge  # on the top border
        for a, b in zip(edge.points, edge.points[1:], strict=False):
            for box in layout.boxes.values():
                assert not _enters(box, a, b), (edge.parent, edge.child, box.name)
            segments.append((edge, a, b))
    for (one, a, b), (two, c, d) in combinations(segments, 2):
        if one is two:
            continue
        shared = {a, b} & {c, d}  # fan-out from one border point, or fan-in to one, is not a crossing
        if shared and one.parent != two.parent and one.child != two.child:
            pytest.fail(f"{one.parent}->{one.child} and {two.parent}->{two.child} meet at {shared}")
        if not shared:
            assert not _cross(a, b, c, d), f"{one.parent}->{one.child} crosses {two.parent}->{two.child}"
    if graph == "long edge":
        assert max(len(e.points) for e in layout.edges) > 2  # routed through the layers between

    # as drawn (the PNG's pixels): no white pixel between each arrow's head and its child's top border (the tip's
    # anti-aliased pixel is light, not white), and each label lies inside its box
    fig.set_dpi(DPI)
    fig.canvas.draw()
    pixels = np.asarray(fig.canvas.buffer_rgba())[:, :, :3].astype(int)
    for edge in layout.edges:
        (x0, y0), (x1, y1) = edge.points[-2], edge.points[-1]
        length = ((x1 - x0) ** 2 + (y1 - y0) ** 2) ** 0.5
        back = [(x1 - (x1 - x0) * d / DPI / length, y1 - (y1 - y0) * d / DPI / length) for d in range(5)]
        seen = [pixels[int((layout.height - y) * DPI), int(x * DPI)] for x, y in back]  # along the arrow, 0-4 px
        assert all(sum(pixel) < 735 for pixel in seen), (edge.parent, edge.child, [p.tolist() for p in seen])
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    patches = {p.get_gid(): p for p in ax.patches}
    for text in ax.texts:
        if text.get_gid() in layout.boxes:
            inside = patches[text.get_gid()].get_window_extent(renderer)
            label = text.get_window_extent(renderer)
            assert inside.x0 <= label.x0 and label.x1 <= inside.x1 and inside.y0 <= label.y0 and label.y1 <= inside.y1


def test_step_times_axis_is_labelled_when_every_step_takes_10_to_100_ms():
    """The utilization figure's step-time axis (symlog): steps of 18-45 ms, as the digits' LeNet runs, once showed
    no number on the axis at all (symlog labels only powers of ten)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipeline.local.report.plots import draw_step_times

    steps = [{"step": i, "data_seconds": 0.018 + 0.002 * (i % 3), "compute_seconds": 0.045 - 0.001 * (i % 5)}
             for i in range(50)]  # fmt: skip
    fig, ax = plt.subplots()
    draw_step_times(ax, steps)
    fig.canvas.draw()
    low, high = ax.get_ylim()
    shown = [t.get_text() for t in ax.get_yticklabels() if low <= t.get_position()[1] <= high and t.get_text()]
    plt.close(fig)
    assert len(shown) >= 2, shown
