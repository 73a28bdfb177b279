"""Where the step graph's boxes and arrows go: a layered drawing (Sugiyama's method, as Graphviz's ``dot`` does),
top to bottom in execution order as SageMaker Studio draws a pipeline.

1. Edges: each step's ``DependsOn`` (which the executor records with the data dependencies included) and its
   ConditionStep, less every edge that a longer path already implies (the transitive reduction, as Graphviz's
   ``tred``): ``split -> evaluate`` adds nothing to ``split -> tune -> train -> evaluate`` but would cross it.
2. Layers: a step's layer is its longest path from a first step. An edge that still spans several layers runs
   through a free slot in each layer between (a "dummy node"), so no edge passes through a box.
3. Order within a layer: barycentre sweeps down and up, keeping the order with the fewest crossings.
4. Positions: each slot as near the mean of its parents' as the order and a box's width allow (least squares
   under the order, solved by pool-adjacent-violators), so a single child sits under its parent.

Every box has the same size (the largest label's plus padding), so layers are bands of equal height and every
arrow runs from the middle of its parent's bottom border to the middle of its child's top border; between
layers there are only arrows. Units are inches (the figure is drawn at this size).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

#: Space around a label inside its box, space between boxes of a layer and between layers, margin (inches).
PAD_X, PAD_Y, GAP_X, GAP_Y, MARGIN = 0.12, 0.07, 0.3, 0.42, 0.08
_SWEEPS = 8


@dataclass(frozen=True)
class Box:
    """A step's box: ``x0 < x1`` left to right, ``y0 < y1`` bottom to top (inches)."""

    name: str
    x0: float
    y0: float
    x1: float
    y1: float

    @property
    def top(self) -> tuple[float, float]:
        return ((self.x0 + self.x1) / 2, self.y1)

    @property
    def bottom(self) -> tuple[float, float]:
        return ((self.x0 + self.x1) / 2, self.y0)


@dataclass(frozen=True)
class Edge:
    """An arrow from ``parent`` to ``child`` through ``points`` (first on the parent's bottom border, last on the
    child's top border); ``branch`` is "if"/"else" for a ConditionStep's branch step, else None."""

    parent: str
    child: str
    points: tuple[tuple[float, float], ...]
    branch: str | None = None


@dataclass(frozen=True)
class GraphLayout:
    boxes: dict[str, Box]
    edges: list[Edge]
    width: float
    height: float


def step_edges(steps: list[dict]) -> dict[str, list[str]]:
    """``{child: [parent, ...]}`` from execution.json's steps (``DependsOn`` and ``Branch``), transitively reduced;
    parents in the steps' order."""
    names = [s["StepName"] for s in steps]
    known = set(names)
    parents: dict[str, set[str]] = {}
    for step in steps:
        found = {d for d in step.get("DependsOn") or [] if d in known}
        branch = step.get("Branch")
        if branch and branch[0] in known:
            found.add(branch[0])
        found.discard(step["StepName"])
        parents[step["StepName"]] = found
    ancestors: dict[str, set[str]] = {}

    def ancestors_of(name: str, visiting: frozenset = frozenset()) -> set[str]:
        if name not in ancestors:
            found = set()
            for parent in parents[name] - visiting:  # a cycle (a damaged record) must not recurse forever
                found |= {parent} | ancestors_of(parent, visiting | {name})
            ancestors[name] = found
        return ancestors[name]

    reduced = {}
    for name in names:
        implied = set().union(*(ancestors_of(p) for p in parents[name])) if parents[name] else set()
        reduced[name] = [p for p in names if p in parents[name] and p not in implied]
    return reduced


def layout_step_graph(steps: list[dict], label_size: Callable[[str], tuple[float, float]],
                      labels: dict[str, str]) -> GraphLayout:  # fmt: skip
    """Place every step of ``steps`` (execution.json's ``Steps``) and route its edges; see the module docstring.

    ``labels``: each step's text in its box; ``label_size(text)``: that text's (width, height) in inches.
    """
    names = [s["StepName"] for s in steps]
    parents = step_edges(steps)
    branches = {s["StepName"]: s["Branch"] for s in steps if s.get("Branch")}
    depth: dict[str, int] = {}

    def level(name: str, visiting: frozenset = frozenset()) -> int:
        if name not in depth:
            depth[name] = 1 + max((level(p, visiting | {name}) for p in parents[name] if p not in visiting),
                                  default=-1)  # fmt: skip
        return depth[name]

    layers: list[list[str]] = [[] for _ in range(1 + max((level(n) for n in names), default=0))]
    for name in names:
        layers[level(name)].append(name)
    # long edges run through one dummy node per layer between: (parent, child, layer) names it
    chains: dict[tuple[str, str], list] = {}
    up: dict = {n: list(parents[n]) for n in names}
    for child in names:
        for parent in parents[child]:
            chain, previous = [parent], parent
            for layer in range(depth[parent] + 1, depth[child]):
                dummy = (parent, child, layer)
                layers[layer].append(dummy)
                up[dummy] = [previous]
                chain.append(dummy)
                previous = dummy
            up[child] = [previous if p == parent else p for p in up[child]]
            chains[(parent, child)] = [*chain, child]
    down: dict = {node: [] for layer in layers for node in layer}
    for node, ps in up.items():
        for p in ps:
            down[p].append(node)
    order = _order(layers, up, down)
    box_w = max((label_size(labels[n])[0] for n in names), default=1.0) + 2 * PAD_X
    box_h = max((label_size(labels[n])[1] for n in names), default=0.3) + 2 * PAD_Y
    x = _positions(order, up, box_w + GAP_X)
    left = min((v for v in x.values()), default=0.0) - box_w / 2 - MARGIN
    width = max((v for v in x.values()), default=0.0) + box_w / 2 + MARGIN - left
    height = len(layers) * box_h + (len(layers) - 1) * GAP_Y + 2 * MARGIN
    band_top = {i: height - MARGIN - i * (box_h + GAP_Y) for i in range(len(layers))}
    boxes = {n: Box(n, x[n] - left - box_w / 2, band_top[depth[n]] - box_h, x[n] - left + box_w / 2,
                    band_top[depth[n]]) for n in names}  # fmt: skip
    edges = []
    for (parent, child), chain in chains.items():
        points = [boxes[parent].bottom]
        for dummy in chain[1:-1]:
            points += [(x[dummy] - left, band_top[dummy[2]]), (x[dummy] - left, band_top[dummy[2]] - box_h)]
        points.append(boxes[child].top)
        branch = branches.get(child)
        label = {"IfSteps": "if", "ElseSteps": "else"}.get(branch[1]) if branch and branch[0] == parent else None
        edges.append(Edge(parent, child, tuple(points), label))
    return GraphLayout(boxes, edges, width, height)


def _crossings(layers: list[list], up: dict) -> int:
    """Crossings of straight edges between adjacent layers in this order: pairs whose ends are in opposite order."""
    total = 0
    for upper, lower in zip(layers, layers[1:], strict=False):
        at = {n: i for i, n in enumerate(upper)}
        pairs = [(at[p], i) for i, n in enumerate(lower) for p in up[n]]
        total += sum(1 for a, (p1, c1) in enumerate(pairs) for p2, c2 in pairs[a + 1 :] if (p1 - p2) * (c1 - c2) < 0)
    return total


def _order(layers: list[list], up: dict, down: dict) -> list[list]:
    """Barycentre sweeps (down using parents, up using children); the order with the fewest crossings wins."""
    best, best_crossings = [list(layer) for layer in layers], _crossings(layers, up)
    current = [list(layer) for layer in layers]
    for sweep in range(_SWEEPS):
        downward = sweep % 2 == 0
        indices = range(1, len(current)) if downward else range(len(current) - 2, -1, -1)
        for i in indices:
            fixed = {n: j for j, n in enumerate(current[i - 1 if downward else i + 1])}
            neighbours = up if downward else down
            keep = {n: j for j, n in enumerate(current[i])}

            def centre(node, fixed=fixed, neighbours=neighbours, keep=keep):
                around = [fixed[n] for n in neighbours[node] if n in fixed]
                return (sum(around) / len(around) if around else keep[node], keep[node])

            current[i].sort(key=centre)
        crossings = _crossings(current, up)
        if crossings < best_crossings:
            best, best_crossings = [list(layer) for layer in current], crossings
    return best


def _positions(order: list[list], up: dict, pitch: float) -> dict:
    """x of every node: layer by layer, each as near its parents' mean x as the order and ``pitch`` allow."""
    x: dict = {}
    for layer in order:
        wanted = [sum(x[p] for p in up[n]) / len(up[n]) if up.get(n) else 0.0 for n in layer]
        # minimise sum (x_i - wanted_i)^2 with x_{i+1} - x_i >= pitch: z_i = x_i - i * pitch is non-decreasing,
        # so it is the isotonic regression of wanted_i - i * pitch (pool adjacent violators)
        blocks: list[list[float]] = []  # [mean, count]
        for i, w in enumerate(wanted):
            blocks.append([w - i * pitch, 1])
            while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
                mean, count = blocks.pop()
                blocks[-1] = [(blocks[-1][0] * blocks[-1][1] + mean * count) / (blocks[-1][1] + count),
                              blocks[-1][1] + count]  # fmt: skip
        z = [mean for mean, count in blocks for _ in range(count)]
        for i, node in enumerate(layer):
            x[node] = z[i] + i * pitch
    return x
