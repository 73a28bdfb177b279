"""Run the rules over a training job's output and build ``debug.json``; also evaluate managed rule configs.

A training job's output (``SM_OUTPUT_DATA_DIR``, i.e. ``output.tar.gz`` in S3) holds ``tensors/`` (smdebug),
``profiler/`` (``SystemMonitor``) and ``history.json``. ``evaluate_training_output`` accepts the tarball, a
folder holding it, or the extracted folder. Debugger rules run as ``smdebug.rules.Rule`` objects over
``smdebug.trials.create_trial(tensors)`` with ``smdebug.rules.rule_invoker.invoke_rule``; profiler rules read
the JSON-lines samples.

Statuses (``imgclf.schemas``): IssuesFound, NoIssuesFound, Error (the rule raised; message in evidence),
NotApplicable (no data the rule can judge, reason in evidence), Skipped (smdebug missing, no tensors saved, the
training job's hook did not start, or a rule this package does not implement).

A blocking rule blocks when it found issues AND when it could not judge (Skipped or Error): a model whose
training saved no tensors must not pass the quality gate as if the rules had looked (``build_report``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tarfile
import tempfile
import traceback
from pathlib import Path

from imgclf import schemas

from . import params
from .hook import HOOK_FAILED_FILE
from .profiler_rules import cpu_bottleneck, load_profiler, low_gpu_utilization

TENSORS_DIR = "tensors"
PROFILER_DIR = "profiler"
HISTORY_FILE = "history.json"
TRAINING_END_FILE = "training_job_end.ts"
DEFAULT_BLOCKING_RULES = ("VanishingGradient", "PoorWeightInitialization")

log = logging.getLogger(__name__)


def locate_training_output(path: Path, workdir: Path) -> Path:
    """Return the folder that holds the training output (``tensors/``, ``profiler/``, ``history.json``).

    ``path`` may be ``output.tar.gz`` itself, a folder containing one (a ProcessingInput of an S3 object), or
    the extracted folder. Tarballs are extracted under ``workdir`` with ``filter="data"`` (no absolute paths,
    links out of the folder or device files). Raises FileNotFoundError when ``path`` does not exist.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"training output {path} does not exist; pass the train job's output.tar.gz or its extracted folder"
        )
    if path.is_file():
        return _extract(path, workdir)
    if any((path / name).exists() for name in (TENSORS_DIR, PROFILER_DIR, HISTORY_FILE)):
        return path
    tarballs = sorted(path.glob("*.tar.gz"))
    if tarballs:
        return _extract(tarballs[0], workdir)
    return path


def _extract(tarball: Path, workdir: Path) -> Path:
    target = Path(workdir) / "training-output"
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tarball, "r:*") as archive:
        archive.extractall(target, filter="data")
    return target


def run_debugger_rules(tensors_path: Path, parameters: dict[str, dict], names=schemas.DEBUGGER_RULES,
                       hook_failed: Path | None = None) -> dict:
    """Run the named Debugger rules over the smdebug tensors at ``tensors_path``.

    ``parameters``: ``{rule: {parameter: value}}`` (missing rules or keys take the AWS defaults).
    ``hook_failed``: the training job's ``hook_failed.json`` (``imgclf.debugger.hook``), when it may exist: its
    reason becomes every rule's Skipped reason. Returns ``{rule: {"status", "evidence"}}``. Never raises for a
    rule's own failure: that becomes ``Error``.
    """
    tensors_path = Path(tensors_path)
    reason = _hook_failure(hook_failed) or _tensors_unusable(tensors_path)
    if reason:
        return {name: _verdict(schemas.SKIPPED, reason=reason) for name in names}
    try:
        trial, cleanup = _open_trial(tensors_path)
    except Exception as error:
        return {name: _error(error) for name in names}
    try:
        return {name: _run_one(name, parameters.get(name, {}), trial) for name in names}
    finally:
        cleanup()


def run_managed_rule(rule_to_invoke: str, rule_parameters: dict, tensors_path: str) -> dict:
    """Evaluate one managed ``DebugRuleConfiguration`` with this package's rules.

    ``rule_to_invoke``: the built-in rule's name (e.g. "VanishingGradient"); ``rule_parameters``: its
    ``RuleParameters`` (string values; ``rule_to_invoke`` inside is ignored); ``tensors_path``: the smdebug
    output folder (the hook config's ``LocalPath`` / ``S3OutputPath`` copied locally). Returns ``{"status",
    "evidence"}`` with status IssuesFound, NoIssuesFound, Error, NotApplicable or Skipped (rule not implemented,
    smdebug missing, no tensors).
    """
    if rule_to_invoke not in schemas.DEBUGGER_RULES:
        return _verdict(
            schemas.SKIPPED,
            reason=f"rule {rule_to_invoke!r} is not implemented here; implemented: {', '.join(schemas.DEBUGGER_RULES)}",
        )
    return run_debugger_rules(Path(tensors_path), {rule_to_invoke: dict(rule_parameters or {})}, [rule_to_invoke])[
        rule_to_invoke
    ]


def run_profiler_rules(profiler_path: Path, parameters: dict[str, dict], names=schemas.PROFILER_RULES) -> dict:
    """Run LowGPUUtilization and CPUBottleneck over ``SystemMonitor``'s files; ``{rule: {"status", "evidence"}}``."""
    profiler_path = Path(profiler_path)
    samples, steps = load_profiler(profiler_path)
    results = {}
    for name in names:
        if not samples and not steps:
            results[name] = _verdict(schemas.SKIPPED, reason=f"no profiler samples in {profiler_path}")
            continue
        try:
            values = params.resolve(name, parameters.get(name, {}))
            if name == "LowGPUUtilization":
                status, evidence = low_gpu_utilization(samples, **values)
            else:
                status, evidence = cpu_bottleneck(samples, steps, **values)
            results[name] = {"status": status, "evidence": evidence}
        except Exception as error:
            results[name] = _error(error)
    return results


def evaluate_training_output(
    training_output: Path,
    parameters: dict[str, dict] | None = None,
    blocking_rules=DEFAULT_BLOCKING_RULES,
    rules=None,
    tensors: Path | None = None,
) -> dict:
    """Run every rule over a training output and return the ``debug.json`` document.

    ``rules``: names to run (default: all of ``schemas.DEBUGGER_RULES + schemas.PROFILER_RULES``); the others
    are ``Skipped``. ``blocking_rules``: rules whose IssuesFound, Skipped or Error count in
    ``summary.blocking_issues_found`` (``build_report``). ``tensors``: the smdebug folder when it is not the
    training output's ``tensors/``: with a managed DebugHookConfig the hook writes to the hook's S3 path
    (``<S3OutputPath>/<training job name>/debug-output``), not to ``output.tar.gz``. Raises FileNotFoundError
    when ``training_output`` or ``tensors`` does not exist and ValueError for unknown rule names.
    """
    parameters = parameters or {}
    known = schemas.DEBUGGER_RULES + schemas.PROFILER_RULES
    selected = tuple(rules) if rules else known
    for name in (*selected, *blocking_rules, *parameters):
        if name not in known:
            raise ValueError(f"unknown rule {name!r}; known rules: {', '.join(known)}")
    with tempfile.TemporaryDirectory(prefix="debug-") as workdir:
        root = locate_training_output(Path(training_output), Path(workdir))
        if tensors is not None and not Path(tensors).exists():
            raise FileNotFoundError(
                f"smdebug tensors {tensors} do not exist; pass the hook's debug-output folder or leave --tensors out"
            )
        tensors_path = Path(tensors) if tensors is not None else root / TENSORS_DIR
        debugger = [n for n in schemas.DEBUGGER_RULES if n in selected]
        profiler = [n for n in schemas.PROFILER_RULES if n in selected]
        hook_failed = root / TENSORS_DIR / HOOK_FAILED_FILE
        results = run_debugger_rules(tensors_path, parameters, debugger, hook_failed) if debugger else {}
        results.update(run_profiler_rules(root / PROFILER_DIR, parameters, profiler) if profiler else {})
    for name in known:
        if name not in results:
            results[name] = _verdict(schemas.SKIPPED, reason="not selected with --rules")
    return build_report({name: results[name] for name in known}, blocking_rules)


def build_report(results: dict[str, dict], blocking_rules=DEFAULT_BLOCKING_RULES) -> dict:
    """Wrap per-rule results into ``debug.json``: ``{"rules": {...}, "summary": {...}}`` (docs/contracts.md).

    ``summary.blocking_issues_found`` (int, the quality gate's condition) counts the blocking rules that found
    issues or could not judge (Skipped or Error; listed in ``summary.blocking_not_judged``): a blocking rule
    that did not look passes nothing. ``summary.blocking_reason`` (str, in the FailStep's message) names each
    of them with its verdict and reason, or is "none".
    """
    blocking = set(blocking_rules)
    rules = {}
    for name, result in results.items():
        rules[name] = {**result, "blocking": name in blocking}
    issues = [name for name, r in rules.items() if r["status"] == schemas.ISSUES_FOUND]
    not_judged = [n for n, r in rules.items() if n in blocking and r["status"] in (schemas.SKIPPED, schemas.ERROR)]
    blocked = [name for name in rules if name in blocking and (name in issues or name in not_judged)]
    return {
        "rules": rules,
        "summary": {
            "issues_found": issues,
            "blocking_issues_found": len(blocked),
            "blocking_not_judged": not_judged,
            "blocking_reason": "; ".join(_blocking_reason(name, rules[name]) for name in blocked) or "none",
            "blocking_rules": sorted(blocking),
            "errors": [name for name, r in rules.items() if r["status"] == schemas.ERROR],
            "statuses": {name: r["status"] for name, r in rules.items()},
        },
    }


def _blocking_reason(name: str, result: dict) -> str:
    """``"VanishingGradient: Skipped (no smdebug tensors at ...)"``, cut to 300 characters."""
    evidence = result.get("evidence") or {}
    detail = next((evidence[k] for k in ("reason", "message", "first") if evidence.get(k)), "")
    text = f"{name}: {result['status']}" + (f" ({detail})" if detail else "")
    return text if len(text) <= 300 else text[:297] + "..."


def _hook_failure(marker: Path | None) -> str:
    """The reason in the training job's ``hook_failed.json`` ("" when there is none)."""
    if marker is None or not Path(marker).is_file():
        return ""
    try:
        reason = json.loads(Path(marker).read_text(encoding="utf-8")).get("reason", "")
    except (ValueError, AttributeError):
        reason = "unreadable hook_failed.json"
    return f"the training job's smdebug hook did not start: {reason or 'no reason given'}"


def _run_one(name: str, given: dict, trial) -> dict:
    from smdebug.rules.rule_invoker import invoke_rule

    from .rules import DEBUGGER_RULE_CLASSES

    try:
        values = params.resolve(name, given)
        rule = DEBUGGER_RULE_CLASSES[name](trial, **values)
        steps = trial.steps()
        if steps:
            invoke_rule(rule, start_step=steps[0], end_step=steps[-1] + 1, raise_eval_cond=False)
        status, evidence = rule.result()
        return {"status": status, "evidence": evidence}
    except Exception as error:
        log.warning("rule %s failed: %s", name, error)
        return _error(error)


def _tensors_unusable(tensors_path: Path) -> str:
    """Why the rules cannot run on ``tensors_path`` ("" when they can)."""
    try:
        os.environ.setdefault("SMDEBUG_LOG_LEVEL", "error")
        import smdebug.trials  # noqa: F401
    except Exception as error:
        return f"smdebug is not importable ({type(error).__name__}: {error})"
    if not tensors_path.is_dir() or not any(tensors_path.iterdir()):
        return (
            f"no smdebug tensors at {tensors_path}: training ran without the hook (smdebug missing there) or "
            "a managed DebugHookConfig sent them to its S3OutputPath"
        )
    return ""


def _open_trial(tensors_path: Path):
    """Open the trial; a job that died before ``hook.close()`` lacks the end marker, so read a marked copy."""
    from smdebug.trials import create_trial

    # the job has finished: no need for smdebug's 1 s grace period waiting for other workers' last writes
    os.environ.setdefault("SMDEBUG_TRAINING_END_DELAY_REFRESH", "0")
    if (tensors_path / TRAINING_END_FILE).exists():
        return create_trial(str(tensors_path)), lambda: None
    copy = Path(tempfile.mkdtemp(prefix="tensors-"))
    shutil.copytree(tensors_path, copy, dirs_exist_ok=True)
    (copy / TRAINING_END_FILE).touch()
    return create_trial(str(copy)), lambda: shutil.rmtree(copy, ignore_errors=True)


def _verdict(status: str, **evidence) -> dict:
    return {"status": status, "evidence": evidence}


def _error(error: Exception) -> dict:
    where = traceback.extract_tb(error.__traceback__)[-1:] if error.__traceback__ else []
    at = f" at {where[0].filename.rsplit('/', 1)[-1]}:{where[0].lineno}" if where else ""
    return _verdict(schemas.ERROR, message=f"{type(error).__name__}: {error}{at}")
