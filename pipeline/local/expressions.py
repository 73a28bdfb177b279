"""The expression language of a SageMaker pipeline definition, evaluated locally.

What the definition JSON (``"Version": "2020-12-01"``) can hold in place of a value:

- ``{"Get": "Parameters.<name>"}``, ``{"Get": "Execution.<variable>"}`` (PipelineExecutionId, PipelineName,
  PipelineExecutionArn, PipelineArn, StartDateTime, CurrentDateTime) and ``{"Get": "Steps.<step>.<path>"}``
  where ``<path>`` follows the step's Describe* response: ``ProcessingOutputConfig.Outputs['train'].S3Output.S3Uri``,
  ``BestTrainingJob.TunedHyperParameters['lr']``, ``TrainingJobSummaries[0].TrainingJobName``,
  ``ModelArtifacts.S3ModelArtifacts``, ``PropertyFiles.<name>``, ``OutputParameters['x']``...;
- ``{"Std:Join": {"On": sep, "Values": [...]}}``;
- ``{"Std:JsonGet": {"PropertyFile": {"Get": "Steps.<step>.PropertyFiles.<name>"}, "Path": "a.b[0].c"}}``
  (or ``"S3Uri"`` instead of ``"PropertyFile"``);
- conditions ``{"Type": "Equals" | "GreaterThan" | "GreaterThanOrEqualTo" | "LessThan" |
  "LessThanOrEqualTo", "LeftValue", "RightValue"}``, ``{"Type": "In", "QueryValue", "Values"}``,
  ``{"Type": "Not", "Condition"}`` (the SDK's key; ``"Expression"`` is accepted too) and ``{"Type": "Or",
  "Conditions"}``.

The shapes are those ``sagemaker.workflow`` (SDK v2) writes; see ``sagemaker/workflow/{functions,conditions,
properties,execution_variables}.py``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any


class ExpressionError(Exception):
    """An expression that cannot be evaluated: unknown parameter, step, property or path (the message names it)."""


@dataclass
class Context:
    """What expressions can read.

    ``parameters``: pipeline parameter values by name. ``execution``: execution variables by name (without the
    ``Execution.`` prefix). ``step_properties(step_name) -> dict``: the properties of a finished step (raise
    ExpressionError if it has none). ``property_file(step_name, file_name) -> Any``: a PropertyFile's parsed
    JSON. ``read_json(s3_uri) -> Any``: a JSON object from the store (for ``Std:JsonGet`` on ``S3Uri``).
    """

    parameters: dict[str, Any] = field(default_factory=dict)
    execution: dict[str, Any] = field(default_factory=dict)
    step_properties: Callable[[str], dict] | None = None
    property_file: Callable[[str, str], Any] | None = None
    read_json: Callable[[str], Any] | None = None


_TOKEN = re.compile(r"""\.?([^.\[\]]+)|\[\s*(?:'([^']*)'|"([^"]*)"|(-?\d+))\s*\]""")


def parse_path(path: str) -> list[str | int]:
    """Split a property path into keys and indexes: ``a.b['x'][0]`` -> ``['a', 'b', 'x', 0]``.

    Raises:
        ExpressionError: the path has characters that are neither names nor ``['key']``/``[index]``.
    """
    tokens: list[str | int] = []
    position = 0
    while position < len(path):
        match = _TOKEN.match(path, position)
        if not match or match.end() == position:
            raise ExpressionError(f"cannot parse the property path {path!r} at character {position}")
        name, single, double, index = match.groups()
        if name is not None:
            tokens.append(name)
        elif index is not None:
            tokens.append(int(index))
        else:
            tokens.append(single if single is not None else double)
        position = match.end()
    return tokens


def _step(value: Any, token: str | int, where: str) -> Any:
    """One step down a path: dict key, list index, or a list item picked by its name (``Outputs['train']``)."""
    if isinstance(value, dict):
        if token in value:
            return value[token]
        raise ExpressionError(f"{where}: no key {token!r} (has: {', '.join(map(str, value)) or 'nothing'})")
    if isinstance(value, list):
        if isinstance(token, int):
            if -len(value) <= token < len(value):
                return value[token]
            raise ExpressionError(f"{where}: index {token} out of range (length {len(value)})")
        for item in value:
            if isinstance(item, dict) and token in (
                item.get("OutputName"),
                item.get("ChannelName"),
                item.get("Name"),
            ):
                return item
        raise ExpressionError(f"{where}: no item named {token!r}")
    raise ExpressionError(f"{where}: cannot take {token!r} of a {type(value).__name__}")


def get_path(value: Any, path: Iterable[str | int], where: str = "value") -> Any:
    """Follow ``path`` (tokens from :func:`parse_path`) into ``value``. Raises ExpressionError naming the gap."""
    for token in path:
        value = _step(value, token, where)
        where = f"{where}.{token}" if isinstance(token, str) else f"{where}[{token}]"
    return value


def step_references(expression: Any) -> set[str]:
    """Names of every step that ``expression`` reads through ``Get: Steps.<name>...`` (at any depth)."""
    found: set[str] = set()
    if isinstance(expression, dict):
        get = expression.get("Get")
        if isinstance(get, str) and get.startswith("Steps."):
            found.add(re.split(r"[.\[]", get[len("Steps.") :], maxsplit=1)[0])
        for item in expression.values():
            found |= step_references(item)
    elif isinstance(expression, list):
        for item in expression:
            found |= step_references(item)
    return found


def _resolve_get(reference: str, context: Context) -> Any:
    head, _, rest = reference.partition(".")
    if head == "Parameters":
        if rest not in context.parameters:
            raise ExpressionError(
                f"Get {reference}: no pipeline parameter {rest!r} (defined: {', '.join(context.parameters) or 'none'})"
            )
        return context.parameters[rest]
    if head == "Execution":
        if rest not in context.execution:
            raise ExpressionError(f"Get {reference}: unknown execution variable {rest!r}")
        return context.execution[rest]
    if head == "Steps":
        tokens = parse_path(rest)
        if not tokens or not isinstance(tokens[0], str):
            raise ExpressionError(f"Get {reference}: no step name")
        step_name, path = tokens[0], tokens[1:]
        if path[:1] == ["PropertyFiles"] and len(path) == 2:
            # A PropertyFile reference only makes sense inside Std:JsonGet; keep it symbolic.
            return _PropertyFileRef(step_name, str(path[1]))
        if context.step_properties is None:
            raise ExpressionError(f"Get {reference}: step properties are not available here")
        return get_path(context.step_properties(step_name), path, where=f"Steps.{step_name}")
    raise ExpressionError(f"Get {reference}: expected Parameters.*, Execution.* or Steps.*")


@dataclass(frozen=True)
class _PropertyFileRef:
    step_name: str
    file_name: str


def to_text(value: Any) -> str:
    """How a value is written into a string (``Std:Join``, arguments): JSON for containers, ``true``/``false``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    if value is None:
        return ""
    return str(value)


def json_get(document: Any, path: str, where: str) -> Any:
    """Value at ``path`` (JsonPath-like ``a.b[0].c``, a leading ``$.`` allowed) in ``document``."""
    path = path[2:] if path.startswith("$.") else path
    return get_path(document, parse_path(path), where=where)


def evaluate(expression: Any, context: Context) -> Any:
    """Return ``expression`` with every ``Get``, ``Std:Join`` and ``Std:JsonGet`` replaced by its value.

    Plain values, lists and dicts are walked recursively; other dict keys are kept.

    Raises:
        ExpressionError: an unknown parameter, step, property, property file or JSON path.
    """
    if isinstance(expression, list):
        return [evaluate(item, context) for item in expression]
    if not isinstance(expression, dict):
        return expression
    if set(expression) == {"Get"} and isinstance(expression["Get"], str):
        return _resolve_get(expression["Get"], context)
    if set(expression) == {"Std:Join"}:
        spec = expression["Std:Join"]
        values = evaluate(spec.get("Values", []), context)
        return to_text(evaluate(spec.get("On", ""), context)).join(to_text(v) for v in values)
    if set(expression) == {"Std:JsonGet"}:
        return _json_get(expression["Std:JsonGet"], context)
    if set(expression) == {"Std:Condition"}:
        return evaluate_condition(expression["Std:Condition"], context)
    return {key: evaluate(value, context) for key, value in expression.items()}


def _json_get(spec: dict, context: Context) -> Any:
    path = spec.get("Path")
    if not isinstance(path, str):
        raise ExpressionError(f"Std:JsonGet {spec}: no Path")
    if "PropertyFile" in spec:
        reference = spec["PropertyFile"]
        reference = evaluate(reference, context) if isinstance(reference, dict) else reference
        if not isinstance(reference, _PropertyFileRef):
            raise ExpressionError(
                f"Std:JsonGet: PropertyFile must be Get Steps.<step>.PropertyFiles.<name>, got {reference!r}"
            )
        if context.property_file is None:
            raise ExpressionError("Std:JsonGet: property files are not available here")
        document = context.property_file(reference.step_name, reference.file_name)
        where = f"{reference.step_name}.PropertyFiles.{reference.file_name}"
    elif "S3Uri" in spec:
        uri = evaluate(spec["S3Uri"], context)
        if context.read_json is None:
            raise ExpressionError("Std:JsonGet: the store is not available here")
        document = context.read_json(uri)
        where = str(uri)
    else:
        raise ExpressionError(f"Std:JsonGet {spec}: expected PropertyFile or S3Uri")
    return json_get(document, path, where)


_COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "GreaterThan": lambda a, b: a > b,
    "GreaterThanOrEqualTo": lambda a, b: a >= b,
    "LessThan": lambda a, b: a < b,
    "LessThanOrEqualTo": lambda a, b: a <= b,
}


def _comparable(left: Any, right: Any) -> tuple[Any, Any]:
    """Compare numbers as numbers even when one side arrived as text (a JsonGet of "0.97", a tuned value)."""
    if isinstance(left, (int, float)) and not isinstance(left, bool) and isinstance(right, str):
        return left, float(right)
    if isinstance(right, (int, float)) and not isinstance(right, bool) and isinstance(left, str):
        return float(left), right
    return left, right


def _equals(left: Any, right: Any) -> bool:
    try:
        left, right = _comparable(left, right)
    except ValueError:
        return False
    return left == right


def evaluate_condition(condition: dict, context: Context) -> bool:
    """True or False for one condition of a ConditionStep (see the module docstring for the types).

    Raises:
        ExpressionError: an unknown condition type, or operands that cannot be compared (names both values).
    """
    kind = condition.get("Type")
    if kind == "Equals":
        return _equals(evaluate(condition["LeftValue"], context), evaluate(condition["RightValue"], context))
    if kind in _COMPARISONS:
        left = evaluate(condition["LeftValue"], context)
        right = evaluate(condition["RightValue"], context)
        try:
            left, right = _comparable(left, right)
            return bool(_COMPARISONS[kind](left, right))
        except (TypeError, ValueError) as error:
            raise ExpressionError(f"{kind}: cannot compare {left!r} with {right!r}") from error
    if kind == "In":
        query = evaluate(condition["QueryValue"], context)
        return any(_equals(query, value) for value in evaluate(condition["Values"], context))
    if kind == "Not":
        inner = condition.get("Condition", condition.get("Expression"))
        if not isinstance(inner, dict):
            raise ExpressionError(f"Not: no Condition in {condition}")
        return not evaluate_condition(inner, context)
    if kind == "Or":
        return any(evaluate_condition(inner, context) for inner in condition.get("Conditions", []))
    raise ExpressionError(
        f"unknown condition type {kind!r} (supported: Equals, {', '.join(_COMPARISONS)}, In, Not, Or)"
    )


def evaluate_conditions(conditions: list[dict], context: Context) -> bool:
    """A ConditionStep's outcome: True when every condition holds (the list is a logical AND)."""
    return all(evaluate_condition(condition, context) for condition in conditions)
