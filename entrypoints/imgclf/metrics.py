"""Classification metrics and the one metric log line that the tuner's regexes parse.

The line format is the contract between ``train.py`` and ``MetricDefinitions`` (AWS and local mode)::

    epoch=3 train_loss=0.4100 train_accuracy=0.8800 validation_loss=0.3800 validation_accuracy=0.9120 ...
"""

from __future__ import annotations

import math
import re

#: SageMaker MetricDefinitions (Name, Regex) for the training and tuning jobs; the first group is the value.
METRIC_DEFINITIONS = (
    {"Name": "validation:accuracy", "Regex": r"validation_accuracy=([0-9.]+)"},
    {"Name": "validation:loss", "Regex": r"validation_loss=([0-9.eE+-]+|nan|inf)"},
    {"Name": "train:loss", "Regex": r"train_loss=([0-9.eE+-]+|nan|inf)"},
    {"Name": "train:accuracy", "Regex": r"train_accuracy=([0-9.]+)"},
)
OBJECTIVE_METRIC = "validation:accuracy"
OBJECTIVE_TYPE = "Maximize"


def format_metric_line(epoch: int, **values: float) -> str:
    """Return ``epoch=<n> key=value ...`` with floats to 4 decimals (``lr`` and tiny values in ``%g``)."""
    parts = [f"epoch={epoch}"]
    for key, value in values.items():
        if isinstance(value, float) and (abs(value) < 1e-3 or key == "lr") and value != 0:
            parts.append(f"{key}={value:g}")
        elif isinstance(value, float):
            parts.append(f"{key}={value:.4f}")
        else:
            parts.append(f"{key}={value}")
    return " ".join(parts)


def parse_metric_lines(text: str, definitions=METRIC_DEFINITIONS) -> dict[str, list[float]]:
    """Parse a job log the way SageMaker does: every match of each regex, in order, as floats.

    Returns ``{metric name: [value per matching line]}``; values that are not numbers are skipped.
    """
    found: dict[str, list[float]] = {d["Name"]: [] for d in definitions}
    compiled = [(d["Name"], re.compile(d["Regex"])) for d in definitions]
    for line in text.splitlines():
        for name, pattern in compiled:
            match = pattern.search(line)
            if match:
                try:
                    found[name].append(float(match.group(1)))
                except ValueError:
                    continue
    return found


def binomial_standard_deviation(proportion: float, count: int) -> float:
    """Standard deviation of an accuracy measured on ``count`` samples: sqrt(p(1-p)/n); 0.0 when n == 0."""
    if count <= 0:
        return 0.0
    return math.sqrt(max(proportion * (1.0 - proportion), 0.0) / count)
