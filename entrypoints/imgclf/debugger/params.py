"""Default parameters of every rule, their types, and the conversion of string values (RuleParameters, CLI).

Sources of the defaults:
- Debugger rules: "List of Debugger built-in rules",
  https://docs.aws.amazon.com/sagemaker/latest/dg/debugger-built-in-rules.html (smdebug_rulesconfig 1.0.1,
  installed with the SageMaker SDK, carries these rules' configs without parameter values).
- Profiler rules: "List of Debugger built-in profiler rules",
  https://docs.aws.amazon.com/sagemaker/latest/dg/debugger-built-in-profiler-rules.html, and the defaults in
  ``smdebug_rulesconfig.profiler_rules.rules`` (LowGPUUtilization, CPUBottleneck).
"""

from __future__ import annotations

import json
from typing import Any

# (type, default) per parameter. "list" is a list of strings given as a list or a comma-separated string;
# a default of None means "not set" as in the AWS documentation.
PARAMETER_SPECS: dict[str, dict[str, tuple[str, Any]]] = {
    "VanishingGradient": {"threshold": ("float", 0.0000001)},
    "Overfit": {
        "tensor_regex": ("list", None),
        "start_step": ("int", 0),
        "patience": ("int", 1),
        "ratio_threshold": ("float", 0.1),
    },
    "Overtraining": {
        "patience_train": ("int", 5),
        "patience_validation": ("int", 10),
        "delta": ("float", 0.1),
    },
    "PoorWeightInitialization": {
        "activation_inputs_regex": ("list", [".*relu_input"]),
        "threshold": ("float", 10.0),
        "distribution_range": ("float", 0.001),
        "patience": ("int", 5),
        "steps": ("int", 10),
    },
    "LossNotDecreasing": {
        "collection_names": ("list", None),
        "tensor_regex": ("list", None),
        "use_losses_collection": ("bool", True),
        "num_steps": ("int", 10),
        "diff_percent": ("float", 0.0),
        "mode": ("mode", None),
        # not in the AWS parameter table; the open-source smdebug 0.x rule had it (see loss_not_decreasing.py)
        "increase_threshold_percent": ("float", None),
    },
    "LowGPUUtilization": {
        "threshold_p95": ("float", 70.0),
        "threshold_p5": ("float", 10.0),
        "window": ("int", 500),
        "patience": ("int", 1000),
    },
    "CPUBottleneck": {
        "threshold": ("float", 50.0),
        "gpu_threshold": ("float", 10.0),
        "cpu_threshold": ("float", 90.0),
        "patience": ("int", 1000),
    },
}

MODES = ("EVAL", "TRAIN", "GLOBAL")
#: RuleParameters keys that configure the rule container, not the rule.
CONTAINER_KEYS = ("rule_to_invoke",)


def defaults(rule: str) -> dict[str, Any]:
    """Return ``{parameter: default}`` for ``rule``; raises ValueError naming the known rules for an unknown one."""
    return {name: default for name, (_, default) in _spec(rule).items()}


def resolve(rule: str, given: dict[str, Any] | None = None) -> dict[str, Any]:
    """Return the defaults of ``rule`` overridden by ``given`` (values may be strings, as in RuleParameters).

    Keys in ``CONTAINER_KEYS`` are ignored; ``None`` values keep the default. Raises ValueError for an unknown
    parameter (listing the known ones) or a value of the wrong type.
    """
    spec = _spec(rule)
    values = defaults(rule)
    for key, raw in (given or {}).items():
        if key in CONTAINER_KEYS or raw is None:
            continue
        if key not in spec:
            raise ValueError(f"{rule} has no parameter {key!r}; known parameters: {', '.join(sorted(spec))}")
        values[key] = convert(spec[key][0], raw, f"{rule}.{key}")
    return values


def convert(kind: str, raw: Any, where: str) -> Any:
    """Convert ``raw`` (a value or a possibly JSON-quoted string) to ``kind``; ValueError names ``where``."""
    value = _unquote(raw)
    try:
        if kind == "float":
            return float(value)
        if kind == "int":
            number = float(value)
            if number != int(number):
                raise ValueError
            return int(number)
        if kind == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("true", "1", "yes"):
                return True
            if text in ("false", "0", "no"):
                return False
            raise ValueError
        if kind == "list":
            if isinstance(value, (list, tuple)):
                return [str(item) for item in value]
            items = [item.strip() for item in str(value).split(",") if item.strip()]
            return items or None
        if kind == "mode":
            text = str(value).strip().upper()
            if text in ("", "NONE"):
                return None
            if text not in MODES:
                raise ValueError
            return text
    except (TypeError, ValueError):
        pass
    else:
        raise AssertionError(f"unknown parameter kind {kind}")
    hint = {"mode": "one of EVAL, TRAIN, GLOBAL", "list": "a comma-separated list", "int": "an integer",
            "bool": "true or false"}.get(kind, f"a {kind}")
    raise ValueError(f"{where} must be {hint}, got {raw!r}")


def _spec(rule: str) -> dict[str, tuple[str, Any]]:
    if rule not in PARAMETER_SPECS:
        raise ValueError(f"unknown rule {rule!r}; known rules: {', '.join(PARAMETER_SPECS)}")
    return PARAMETER_SPECS[rule]


def _unquote(raw: Any) -> Any:
    """Accept SageMaker's JSON-quoted strings (``'"10"'``) as well as plain values."""
    if isinstance(raw, str) and len(raw) >= 2 and raw[0] == raw[-1] == '"':
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return raw
    return raw
