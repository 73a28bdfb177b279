"""Run a SageMaker pipeline definition (the JSON, not the Python objects) on this machine.

:class:`LocalExecution` walks the definition's steps in dependency order (``DependsOn`` plus every
``Get: Steps.<name>...`` reference; a ConditionStep's branch steps depend on it), runs independent steps in
parallel up to the CPU count, and records everything in ``<runs>/<execution id>/``:

- ``execution.json``: the execution and each step's status, times, properties and failure reason (schema in
  docs/local-mode.md), rewritten atomically after every change;
- ``definition.json`` and the parameters it ran with (what ``--resume`` reuses);
- ``jobs/<job name>.log``: each job's output; ``tuning/<step>/optuna.journal``: the tuning trials.

Step types: Processing, Training, Tuning (:mod:`pipeline.local.jobs`, :mod:`pipeline.local.tuning`), Condition,
Fail, RegisterModel (:mod:`pipeline.local.registry`), Model (recorded), Lambda (the ``deploy`` function, run
locally by :mod:`pipeline.local.deploy`) and Callback (``endpoint_outcome``, :mod:`pipeline.local.callback`).
Each type has one handler in :data:`STEP_HANDLERS` that returns a :class:`~pipeline.local.status.StepOutcome`, as
the SageMaker SDK's own local runner has one ``_StepExecutor`` per step type (``sagemaker/local/pipeline.py``).

Step caching is SageMaker's: a Processing, Training or Tuning step with ``CacheConfig.Enabled`` whose cache key
attributes (:data:`CACHE_KEY_ATTRIBUTES`, resolved) equal those of a successful run of the same step of the same
pipeline within ``ExpireAfter`` is not run again; it gets that run's properties and names it in
``CacheHitResult.SourcePipelineExecutionArn``. As in AWS, the key holds URIs, never the bytes behind them (new
objects under the same input URI are a cache hit), output locations are not part of it, and a hit does not check
that the earlier outputs still exist. Condition, Fail, RegisterModel, Model, Lambda and Callback steps are never cached.

Statuses are SageMaker's (``Executing``, ``Succeeded``, ``Failed``, ``Stopped``) plus two local ones for steps that
did not run: ``Skipped`` (a ConditionStep branch not taken, or a deploy with no local server) and ``NotStarted``
(an upstream step failed).
"""

from __future__ import annotations

import graphlib
import hashlib
import json
import os
import re
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from imgclf.host import usable_cpus
from pipeline.local import expressions
from pipeline.local.callback import answer as answer_callback
from pipeline.local.deploy import run_deploy
from pipeline.local.expressions import Context, ExpressionError
from pipeline.local.jobs import JobContext, JobError, JobResult, run_processing_job, run_training_job
from pipeline.local.registry import ModelRegistry, RegistryError
from pipeline.local.status import JobStatus, StepOutcome, StepStatus, local_arn
from pipeline.local.store import Store, StoreError, atomic_write_json
from pipeline.local.tracking import ExecutionRun
from pipeline.local.tuning import run_tuning_job

CACHE_FOLDER = ".cache"
#: What SageMaker compares to decide a cache hit, per step type: "Default cache key attributes by pipeline step
#: type" (https://docs.aws.amazon.com/sagemaker/latest/dg/pipelines-default-keys.html). Nothing else of the request
#: counts: not the output locations, instance types, job names, stopping conditions or property files.
CACHE_KEY_ATTRIBUTES = {
    "Processing": ("AppSpecification", "Environment", "ProcessingInputs"),
    "Training": (
        "AlgorithmSpecification",
        "CheckpointConfig",
        "DebugHookConfig",
        "DebugRuleConfigurations",
        "Environment",
        "HyperParameters",
        "InputDataConfig",
    ),
    "Tuning": ("HyperParameterTuningJobConfig", "TrainingJobDefinition", "TrainingJobDefinitions"),
}
#: The children of a tuning step's ``TrainingJobDefinition`` that are part of its key (same page).
TUNING_DEFINITION_KEY_ATTRIBUTES = (
    "AlgorithmSpecification",
    "HyperParameterRanges",
    "InputDataConfig",
    "StaticHyperParameters",
    "TuningObjective",
)
_DURATION = re.compile(r"^P(?:(\d+)Y)?(?:(\d+)M)?(?:(\d+)W)?(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?$")


class ExecutionError(Exception):
    """The definition or the run's options cannot be executed (the message names the step or key and the fix)."""


def new_execution_id() -> str:
    """12 lowercase letters and digits, the shape of a SageMaker pipeline execution id."""
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return "".join(secrets.choice(alphabet) for _ in range(12))


def iso_duration_seconds(text: str) -> float:
    """Seconds in an ISO 8601 duration as CacheConfig's ExpireAfter (``P30D``, ``PT1H``; months = 30 days).

    Raises:
        ExecutionError: not an ISO 8601 duration.
    """
    match = _DURATION.match(text or "")
    if not match or text in ("P", "PT"):
        raise ExecutionError(f"CacheConfig ExpireAfter {text!r} is not an ISO 8601 duration (e.g. P30D, PT12H)")
    years, months, weeks, days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return ((((years * 365 + months * 30 + weeks * 7 + days) * 24 + hours) * 60 + minutes) * 60) + seconds


def resolve_parameters(declared: list[dict], overrides: dict[str, str]) -> dict[str, Any]:
    """Values of the pipeline parameters: each override (text, cast to the parameter's Type) or its default.

    Types: ``String``, ``Integer``, ``Float``, ``Boolean`` (``true``/``false``).

    Raises:
        ExecutionError: an override of an undeclared parameter, a value not of its type, or a parameter with
            neither default nor override.
    """
    by_name = {p["Name"]: p for p in declared}
    unknown = sorted(set(overrides) - set(by_name))
    if unknown:
        raise ExecutionError(
            f"--param {', '.join(unknown)}: not a parameter of this pipeline (has: {', '.join(by_name)})"
        )
    values = {}
    for name, spec in by_name.items():
        kind = spec.get("Type", "String")
        if name not in overrides:
            if "DefaultValue" not in spec:
                raise ExecutionError(f"parameter {name} has no default: pass --param {name}=<{kind}>")
            values[name] = spec["DefaultValue"]
            continue
        text = str(overrides[name])
        try:
            if kind == "Integer":
                values[name] = int(text)
            elif kind == "Float":
                values[name] = float(text)
            elif kind == "Boolean":
                if text.lower() not in ("true", "false"):
                    raise ValueError(text)
                values[name] = text.lower() == "true"
            else:
                values[name] = text
        except ValueError:
            raise ExecutionError(f"--param {name}={text}: not a valid {kind}") from None
    return values


def cache_key_attributes(kind: str, arguments: dict) -> dict:
    """The part of a step's resolved request that SageMaker compares for a cache hit (:data:`CACHE_KEY_ATTRIBUTES`).

    ``kind``: the step type (``Processing``, ``Training``, ``Tuning``); other types have no key (``{}``).
    """
    names = CACHE_KEY_ATTRIBUTES.get(kind, ())
    key = {name: arguments[name] for name in names if name in arguments}
    if kind == "Tuning" and isinstance(key.get("TrainingJobDefinition"), dict):
        definition = key["TrainingJobDefinition"]
        key["TrainingJobDefinition"] = {k: definition[k] for k in TUNING_DEFINITION_KEY_ATTRIBUTES if k in definition}
    return key


def read_run(runs: Path, execution_id: str) -> tuple[dict, dict]:
    """``(definition, execution record)`` of the execution recorded in ``<runs>/<execution_id>``.

    Raises:
        ExecutionError: no such run folder or it is unreadable (the message lists the executions in ``runs``).
    """
    run_dir = Path(runs) / execution_id
    try:
        record = json.loads((run_dir / "execution.json").read_text())
        definition = json.loads((run_dir / "definition.json").read_text())
    except (OSError, json.JSONDecodeError) as error:
        known = sorted(p.parent.name for p in Path(runs).glob("*/execution.json")) if Path(runs).is_dir() else []
        raise ExecutionError(
            f"--resume {execution_id}: cannot read {run_dir}/execution.json ({error}); "
            f"executions in {runs}: {', '.join(known) or 'none'}"
        ) from error
    return definition, record


@dataclass
class StepNode:
    """One step of the flattened graph. ``branch`` is ``(condition step, "IfSteps"|"ElseSteps")`` for branch steps."""

    name: str
    type: str
    spec: dict
    depends_on: set[str]
    branch: tuple[str, str] | None = None


def step_graph(definition: dict) -> dict[str, StepNode]:
    """Every step of ``definition`` (ConditionStep branches flattened), in a valid execution order.

    Raises:
        ExecutionError: a duplicate step name, a reference to an unknown step, a cycle, or an unsupported type.
    """
    nodes: dict[str, StepNode] = {}

    def add(spec: dict, branch: tuple[str, str] | None) -> None:
        name, kind = spec.get("Name"), spec.get("Type")
        if not name:
            raise ExecutionError(f"a step has no Name: {json.dumps(spec)[:200]}")
        if name in nodes:
            raise ExecutionError(f"step name {name!r} is used twice")
        if kind not in STEP_HANDLERS:
            raise ExecutionError(
                f"step {name}: type {kind!r} is not supported locally (supported: {', '.join(STEP_HANDLERS)})"
            )
        body = {key: value for key, value in spec.items() if key not in ("DependsOn",)}
        if kind == "Condition":
            body = {"Arguments": {"Conditions": spec.get("Arguments", {}).get("Conditions", [])}}
        depends = set(spec.get("DependsOn") or []) | expressions.step_references(body)
        if branch:
            depends.add(branch[0])
        depends.discard(name)
        nodes[name] = StepNode(name, kind, spec, depends, branch)
        if kind == "Condition":
            for key in ("IfSteps", "ElseSteps"):
                for inner in spec.get("Arguments", {}).get(key, []):
                    add(inner, (name, key))

    for spec in definition.get("Steps", []):
        add(spec, None)
    for node in nodes.values():
        unknown = node.depends_on - set(nodes)
        if unknown:
            raise ExecutionError(f"step {node.name} depends on unknown step(s) {sorted(unknown)}")
    try:
        order = list(graphlib.TopologicalSorter({n.name: n.depends_on for n in nodes.values()}).static_order())
    except graphlib.CycleError as error:
        raise ExecutionError(f"the steps form a cycle: {' -> '.join(error.args[1])}") from error
    return {name: nodes[name] for name in order}


@dataclass
class RunOptions:
    """How to run: folders, parameter overrides, CPU budget, what to show, extra objects for the store.

    ``uploads`` (S3 URI -> bytes) are written into the store before the run (the code bundle, runproc.sh):
    what ``upsert`` uploads to S3 in AWS. ``links`` (S3 URI -> local folder) are linked into the store
    (``--data``). ``echo`` receives ``(job name, line)`` for each log line and ``on_event`` receives
    ``(step name, step record)`` after each change (the progress display).
    """

    store: Path = Path(".store")
    runs: Path = Path("runs")
    parameters: dict[str, str] = field(default_factory=dict)
    cpus: int = field(default_factory=usable_cpus)
    uploads: dict[str, bytes] = field(default_factory=dict)
    links: dict[str, Path] = field(default_factory=dict)
    echo: Callable[[str, str], None] | None = None
    on_event: Callable[[str, dict], None] | None = None
    keep_job_dirs: bool = False


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class LocalExecution:
    """One execution of a definition. Create with :meth:`start` or :meth:`resume`, then call :meth:`run`."""

    def __init__(self, definition: dict, execution_id: str, options: RunOptions, record: dict | None = None):
        self.definition = definition
        self.options = options
        self.id = execution_id
        self.nodes = step_graph(definition)
        self.store = Store(options.store)
        self.run_dir = Path(options.runs).resolve() / execution_id
        self.jobs_dir = self.run_dir / "jobs"
        self.registry = ModelRegistry(self.store)
        self.lock = threading.RLock()
        self.stop_event = threading.Event()
        self.pipeline_name = definition.get("PipelineName") or (record or {}).get("PipelineName") or "local-pipeline"
        if record is None:
            parameters = resolve_parameters(definition.get("Parameters", []), options.parameters)
            record = {
                "PipelineName": self.pipeline_name,
                "PipelineArn": local_arn(f"pipeline/{self.pipeline_name}"),
                "PipelineExecutionId": execution_id,
                "PipelineExecutionArn": self._execution_arn(),
                "PipelineExecutionStatus": StepStatus.EXECUTING,
                "CreationTime": _now_iso(),
                "Parameters": parameters,
                "Store": str(self.store.root),
                "Definition": "definition.json",
                "Attempts": [],
                "Steps": [self._blank_step(node) for node in self.nodes.values()],
            }
        self.record = record
        self.steps = {step["StepName"]: step for step in record["Steps"]}
        self.tracking: ExecutionRun | None = None  # the MLflow parent run, opened by run()

    # -- construction -------------------------------------------------------------------------------------------
    @classmethod
    def start(cls, definition: dict | str, options: RunOptions, pipeline_name: str | None = None) -> LocalExecution:
        """A new execution of ``definition`` (dict or JSON text) with a fresh execution id."""
        definition = json.loads(definition) if isinstance(definition, str) else definition
        if pipeline_name:
            definition = {**definition, "PipelineName": pipeline_name}
        return cls(definition, new_execution_id(), options)

    @classmethod
    def resume(cls, execution_id: str, options: RunOptions) -> LocalExecution:
        """Continue ``<runs>/<execution_id>``: its definition and parameters; steps that succeeded are kept.

        Raises:
            ExecutionError: no such run folder or it is unreadable.
        """
        definition, record = read_run(options.runs, execution_id)
        for step in record["Steps"]:
            status = step["StepStatus"]
            if status != StepStatus.SUCCEEDED and not (status == StepStatus.SKIPPED and step.get("Branch")):
                step.update(cls._blank_step_fields())
        record["PipelineExecutionStatus"] = StepStatus.EXECUTING
        record.pop("FailureReason", None)
        return cls(definition, execution_id, options, record)

    @staticmethod
    def _blank_step_fields() -> dict:
        return {
            "StepStatus": StepStatus.NOT_STARTED,
            "StartTime": None,
            "EndTime": None,
            "DurationSeconds": None,
            "FailureReason": None,
            "Properties": {},
            "CacheHitResult": None,
            "Jobs": [],
            "Detail": "",
        }

    def _blank_step(self, node: StepNode) -> dict:
        return {
            "StepName": node.name,
            "StepType": node.type,
            "DependsOn": sorted(node.depends_on),
            "Branch": list(node.branch) if node.branch else None,
            **self._blank_step_fields(),
        }

    def _execution_arn(self) -> str:
        return local_arn(f"pipeline/{self.pipeline_name}/execution/{self.id}")

    # -- records ------------------------------------------------------------------------------------------------
    def save(self) -> None:
        """Write execution.json atomically (called after every change)."""
        with self.lock:
            self.record["LastModifiedTime"] = _now_iso()
            atomic_write_json(self.run_dir / "execution.json", self.record)

    def update_step(self, name: str, **fields: Any) -> None:
        with self.lock:
            self.steps[name].update(fields)
            self.save()
            step = dict(self.steps[name])
        if self.options.on_event:
            self.options.on_event(name, step)

    # -- expression context -------------------------------------------------------------------------------------
    def context(self) -> Context:
        def step_properties(name: str) -> dict:
            step = self.steps.get(name)
            if step is None:
                raise ExpressionError(f"no step named {name!r}")
            if step["StepStatus"] != StepStatus.SUCCEEDED:
                raise ExpressionError(f"step {name} has no properties (status {step['StepStatus']})")
            return step["Properties"]

        return Context(
            parameters=self.record["Parameters"],
            execution={
                "PipelineExecutionId": self.id,
                "PipelineExecutionArn": self.record["PipelineExecutionArn"],
                "PipelineName": self.pipeline_name,
                "PipelineArn": self.record["PipelineArn"],
                "StartDateTime": self.record["CreationTime"],
                "CurrentDateTime": _now_iso(),
            },
            step_properties=step_properties,
            property_file=self.property_file,
            read_json=self.store.read_json,
        )

    def property_file(self, step_name: str, file_name: str) -> Any:
        """A PropertyFile of a finished processing step: ``<output S3Uri>/<FilePath>`` read from the store."""
        node = self.nodes.get(step_name)
        spec = (
            next((p for p in (node.spec.get("PropertyFiles") or []) if p["PropertyFileName"] == file_name), None)
            if node
            else None
        )
        if spec is None:
            raise ExpressionError(f"step {step_name} declares no PropertyFile {file_name!r}")
        properties = self.context().step_properties(step_name)
        outputs = properties.get("ProcessingOutputConfig", {}).get("Outputs", [])
        output = next((o for o in outputs if o.get("OutputName") == spec["OutputName"]), None)
        if output is None:
            raise ExpressionError(f"PropertyFile {file_name}: step {step_name} has no output {spec['OutputName']!r}")
        uri = f"{output['S3Output']['S3Uri'].rstrip('/')}/{spec['FilePath']}"
        try:
            return self.store.read_json(uri)
        except StoreError as error:
            raise ExpressionError(f"PropertyFile {step_name}.{file_name}: {error}") from error

    # -- naming -------------------------------------------------------------------------------------------------
    def job_name(self, node: StepNode, arguments: dict, key: str, limit: int = 63) -> str:
        """``<job name prefix in the definition, or the step name>-<execution id>``, at most ``limit`` chars."""
        base = arguments.get(key) or node.name
        base = re.sub(r"[^a-zA-Z0-9-]", "-", str(base)).strip("-") or "job"
        return f"{base[: limit - len(self.id) - 1]}-{self.id}"

    # -- caching ------------------------------------------------------------------------------------------------
    def cache_key(self, node: StepNode, arguments: dict) -> str:
        """SHA-256 over the pipeline name, step name and type and the step's :func:`cache_key_attributes`."""
        blob = json.dumps(
            [self.pipeline_name, node.name, node.type, cache_key_attributes(node.type, arguments)],
            sort_keys=True,
            default=str,
        )
        return hashlib.sha256(blob.encode()).hexdigest()

    def _cache_path(self, node: StepNode, key: str) -> Path:
        safe = re.sub(r"[^a-zA-Z0-9_-]", "_", node.name)
        return (
            self.store.root / CACHE_FOLDER / re.sub(r"[^a-zA-Z0-9_-]", "_", self.pipeline_name) / safe / f"{key}.json"
        )

    def cache_lookup(self, node: StepNode, key: str) -> dict | None:
        """The latest successful run of this step with ``key``, unless caching is off or it is past ExpireAfter.

        Like SageMaker, nothing checks that the earlier run's outputs are still there: a step that reads one that
        was deleted fails.
        """
        config = node.spec.get("CacheConfig") or {}
        path = self._cache_path(node, key)
        if node.type not in CACHE_KEY_ATTRIBUTES or not config.get("Enabled") or not path.is_file():
            return None
        try:
            cached = json.loads(path.read_text())
        except json.JSONDecodeError:
            return None
        if config.get("ExpireAfter") and time.time() - cached["Time"] > iso_duration_seconds(config["ExpireAfter"]):
            return None
        return cached

    def cache_save(self, node: StepNode, key: str, properties: dict) -> None:
        if node.type in CACHE_KEY_ATTRIBUTES and (node.spec.get("CacheConfig") or {}).get("Enabled"):
            atomic_write_json(
                self._cache_path(node, key),
                {
                    "Time": time.time(),
                    "PipelineExecutionArn": self.record["PipelineExecutionArn"],
                    "StepName": node.name,
                    "Properties": properties,
                },
            )

    # -- running ------------------------------------------------------------------------------------------------
    def run(self) -> dict:
        """Run every step that has not succeeded; return the final execution record (also in execution.json).

        Raises:
            StoreError: the store is in use by another run.
        """
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.run_dir / "definition.json", self.definition)
        with self.store.lock(f"execution {self.id}"):
            for uri, data in self.options.uploads.items():
                path = self.store.path(uri)
                if not path.is_file() or path.read_bytes() != data:
                    self.store.put_bytes(uri, data)
            for uri, folder in self.options.links.items():
                self.store.link(folder, uri)
            self.record["Attempts"].append({"StartTime": _now_iso(), "Pid": os.getpid()})
            self.tracking = ExecutionRun.open(self)
            self.save()
            try:
                self._schedule()
            except BaseException:
                self.stop_event.set()
                with self.lock:
                    for step in self.steps.values():
                        if step["StepStatus"] == StepStatus.EXECUTING:
                            step.update(StepStatus=StepStatus.STOPPED, FailureReason="the local run was interrupted")
                    self.record.update(
                        PipelineExecutionStatus=StepStatus.STOPPED, FailureReason="the local run was interrupted"
                    )
                    self.save()
                raise
        return self.record

    def _ready(self, name: str) -> bool:
        node = self.nodes[name]
        if any(self.steps[dep]["StepStatus"] != StepStatus.SUCCEEDED for dep in node.depends_on):
            return False
        if node.branch:
            outcome = self.steps[node.branch[0]]["Properties"].get("Outcome")
            return (outcome == "True") == (node.branch[1] == "IfSteps")
        return True

    def _schedule(self) -> None:
        cpus = max(1, self.options.cpus)
        running: dict[Future, str] = {}
        failed = False
        pool = ThreadPoolExecutor(max_workers=cpus, thread_name_prefix="step")
        try:
            while True:
                if not failed:
                    for name in self.nodes:
                        step = self.steps[name]
                        waiting = step["StepStatus"] == StepStatus.NOT_STARTED and name not in running.values()
                        if waiting and self._ready(name):
                            step["StepStatus"] = StepStatus.EXECUTING  # claimed before the worker starts
                            running[pool.submit(self._run_step, name, max(1, cpus // (len(running) + 1)))] = name
                if not running:
                    break
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    name = running.pop(future)
                    future.result()
                    if self.steps[name]["StepStatus"] in (StepStatus.FAILED, StepStatus.STOPPED):
                        failed = True
        except BaseException:
            self.stop_event.set()  # running jobs get SIGTERM; then the pool can drain
            raise
        finally:
            pool.shutdown(wait=True)
        self._finish()

    def _finish(self) -> None:
        changed: list[str] = []
        with self.lock:
            for name, node in self.nodes.items():
                step = self.steps[name]
                if step["StepStatus"] != StepStatus.NOT_STARTED:
                    continue
                changed.append(name)
                if node.branch and self.steps[node.branch[0]]["StepStatus"] == StepStatus.SUCCEEDED:
                    taken = self.steps[node.branch[0]]["Properties"].get("Outcome") == "True"
                    if taken != (node.branch[1] == "IfSteps"):
                        step.update(StepStatus=StepStatus.SKIPPED, Detail=f"{node.branch[0]} took the other branch")
                        continue
                blockers = sorted(d for d in node.depends_on if self.steps[d]["StepStatus"] != StepStatus.SUCCEEDED)
                step["Detail"] = f"not started: {', '.join(blockers)} did not succeed" if blockers else "not started"
            failures = [s for s in self.steps.values() if s["StepStatus"] in (StepStatus.FAILED, StepStatus.STOPPED)]
            if failures:
                fail_step = next((s for s in failures if s["StepType"] == "Fail"), None)
                reason = (fail_step or failures[0])["FailureReason"]
                failed = any(s["StepStatus"] == StepStatus.FAILED for s in failures)
                status = StepStatus.FAILED if failed else StepStatus.STOPPED
                self.record.update(
                    PipelineExecutionStatus=status,
                    FailureReason=f"Step {(fail_step or failures[0])['StepName']}: {reason}",
                )
            else:
                self.record["PipelineExecutionStatus"] = StepStatus.SUCCEEDED
            self.record["EndTime"] = _now_iso()
            self.save()
            self._write_summary()
        if self.tracking is not None:
            self.tracking.finish(self.record, self.run_dir)
        if self.options.on_event:
            for name in changed:
                self.options.on_event(name, dict(self.steps[name]))

    def _write_summary(self) -> None:
        lines = [f"execution {self.id}: {self.record['PipelineExecutionStatus']}"]
        if self.record.get("FailureReason"):
            lines.append(f"  reason: {self.record['FailureReason']}")
        for step in self.record["Steps"]:
            duration = f"{step['DurationSeconds']:.1f}s" if step.get("DurationSeconds") is not None else "-"
            source = (step.get("CacheHitResult") or {}).get("SourcePipelineExecutionArn")
            cache = f" (cache hit: {source.rsplit('/', 1)[-1]})" if source else ""
            lines.append(
                f"  {step['StepName']:<24} {step['StepType']:<13} {step['StepStatus']:<10} {duration:>8}{cache}"
                + (f"  {step['FailureReason']}" if step.get("FailureReason") else "")
            )
        (self.run_dir / "summary.txt").write_text("\n".join(lines) + "\n")

    def _run_step(self, name: str, threads: int) -> None:
        node = self.nodes[name]
        start = time.time()
        self.update_step(name, StepStatus=StepStatus.EXECUTING, StartTime=_now_iso(), Detail="starting")
        try:
            outcome = STEP_HANDLERS[node.type](self, node, threads)
        except (JobError, StoreError, ExpressionError, RegistryError, ExecutionError) as error:
            outcome = StepOutcome(StepStatus.FAILED, failure_reason=f"ClientError: {error}")
        except Exception as error:  # a bug here must not hang the run: record it on the step
            outcome = StepOutcome(StepStatus.FAILED, failure_reason=f"InternalError: {type(error).__name__}: {error}")
        end = time.time()
        self.update_step(name, EndTime=_now_iso(), DurationSeconds=round(end - start, 3), **outcome.record_fields())
        if self.tracking is not None:
            self.tracking.step_finished(dict(self.steps[name]))

    def arguments(self, node: StepNode) -> dict:
        """The step's ``Arguments`` with every expression resolved against this execution."""
        return expressions.evaluate(node.spec.get("Arguments", {}), self.context())

    def job_context(self, threads: int) -> JobContext:
        return JobContext(
            store=self.store,
            jobs_dir=self.jobs_dir,
            echo=self.options.echo,
            threads=threads,
            keep_job_dirs=self.options.keep_job_dirs,
            environment=self.tracking.job_environment() if self.tracking is not None else {},
        )

    def job_record(self, name: str, kind: str, status: str, log: str | None, reason: str | None, **extra) -> dict:
        """One entry of a step record's ``Jobs`` (``kind``: ``ProcessingJob`` or ``TrainingJob``; ``extra``: the
        job's ``Metrics``, or a tuning trial's ``TunedHyperParameters`` and ``ObjectiveValue``)."""
        log = os.path.relpath(log, self.run_dir) if log else None
        return {"JobName": name, "JobType": kind, "Status": status, "Log": log, **extra, "FailureReason": reason}

    # -- progress -----------------------------------------------------------------------------------------------
    def epoch_reporter(self, step_name: str) -> Callable[[dict[str, float]], None]:
        epochs = 0

        def report(values: dict[str, float]) -> None:
            nonlocal epochs
            if "validation:accuracy" in values or "validation:loss" in values:
                epochs += 1
                shown = " ".join(f"{k}={v:.4g}" for k, v in values.items())
                self.update_step(step_name, Detail=f"epoch {epochs}: {shown}")

        return report

    def trial_reporter(self, step_name: str, total: int | None = None) -> Callable[[str, str, dict], None]:
        state: dict[str, str] = {}
        finished: list[str] = []
        epochs: dict[str, int] = {}

        def report(job: str, event: str, data: dict) -> None:
            short = job.rsplit("-", 2)[-2] if job.count("-") >= 2 else job
            if event == "started":
                state[short] = "started"
                epochs[short] = 0
            elif event == "metrics":
                epochs[short] += 1 if any(k.startswith("validation") for k in data) else 0
                state[short] = f"epoch {epochs[short]}"
            elif event == "finished":
                state.pop(short, None)
                value = data.get("FinalHyperParameterTuningJobObjectiveMetric", {}).get("Value")
                finished.append(
                    f"{short}:{data['TrainingJobStatus']}" + (f"({value:.4f})" if value is not None else "")
                )
            of = f" of {total}" if total else ""  # "trial 2 of 3": the tuner's MaxNumberOfTrainingJobs
            running = ", ".join(f"trial {int(k) if k.isdigit() else k}{of} {v}" for k, v in sorted(state.items()))
            self.update_step(step_name, Detail=f"{len(finished)} done [{' '.join(finished[-4:])}] {running}".strip())

        return report


# -- step handlers: one per step type, each returns the step's outcome ---------------------------------------------
Handler = Callable[[LocalExecution, StepNode, int], StepOutcome]
#: What a job step runs once its cache missed: ``(execution, node, resolved arguments, job context)`` -> the job's
#: result and the step record's ``Jobs``.
JobRunner = Callable[[LocalExecution, StepNode, dict, JobContext], tuple[JobResult, list[dict]]]


def _condition(execution: LocalExecution, node: StepNode, threads: int) -> StepOutcome:
    # each condition is evaluated once; the outcome is their AND (expressions.evaluate_conditions)
    context = execution.context()
    evaluated = [
        {"Type": c.get("Type"), "Outcome": expressions.evaluate_condition(c, context)}
        for c in node.spec["Arguments"].get("Conditions", [])
    ]
    outcome = str(all(c["Outcome"] for c in evaluated))
    return StepOutcome(
        StepStatus.SUCCEEDED,
        {"Outcome": outcome},
        detail=f"Outcome {outcome}",
        metadata={"Condition": {"Outcome": outcome, "Conditions": evaluated}},
    )


def _fail(execution: LocalExecution, node: StepNode, threads: int) -> StepOutcome:
    message = node.spec.get("Arguments", {}).get("ErrorMessage", "")
    message = expressions.to_text(expressions.evaluate(message, execution.context()))
    return StepOutcome(StepStatus.FAILED, failure_reason=message, metadata={"Fail": {"ErrorMessage": message}})


def _register_model(execution: LocalExecution, node: StepNode, threads: int) -> StepOutcome:
    description = execution.registry.create_model_package(execution.arguments(node))
    detail = f"{description['ModelPackageArn']} ({description['ModelApprovalStatus']})"
    return StepOutcome(StepStatus.SUCCEEDED, description, detail=detail)


def _model(execution: LocalExecution, node: StepNode, threads: int) -> StepOutcome:
    arguments = execution.arguments(node)
    name = execution.job_name(node, arguments, "ModelName")
    return StepOutcome(StepStatus.SUCCEEDED, {**arguments, "ModelName": name, "ModelArn": local_arn(f"model/{name}")})


def _lambda(execution: LocalExecution, node: StepNode, threads: int) -> StepOutcome:
    return run_deploy(
        node.name,
        node.spec,
        execution.arguments(node),
        store=execution.store,
        jobs_dir=execution.jobs_dir,
        report=lambda detail: execution.update_step(node.name, Detail=detail),
    )


def _callback(execution: LocalExecution, node: StepNode, threads: int) -> StepOutcome:
    return answer_callback(node.name, execution.arguments(node))


def _job_step(run: JobRunner) -> Handler:
    """The handler of a step that runs a job: a cache hit, or the job (and a cache entry when it completed)."""

    def handle(execution: LocalExecution, node: StepNode, threads: int) -> StepOutcome:
        arguments = execution.arguments(node)
        key = execution.cache_key(node, arguments)
        cached = execution.cache_lookup(node, key)
        if cached is not None:
            source = cached["PipelineExecutionArn"]
            detail = f"cache hit from execution {source.rsplit('/', 1)[-1]}"
            return StepOutcome(StepStatus.SUCCEEDED, cached["Properties"], detail=detail, cache_source=source)
        result, jobs = run(execution, node, arguments, execution.job_context(threads))
        if result.status == JobStatus.COMPLETED:
            execution.cache_save(node, key, result.properties)
            return StepOutcome(StepStatus.SUCCEEDED, result.properties, jobs=jobs)
        status = StepStatus.STOPPED if result.status == JobStatus.STOPPED else StepStatus.FAILED
        return StepOutcome(status, result.properties, failure_reason=result.failure_reason, jobs=jobs)

    return handle


def _processing_job(execution, node, arguments, context) -> tuple[JobResult, list[dict]]:
    name = execution.job_name(node, arguments, "ProcessingJobName")
    execution.update_step(node.name, Detail=f"job {name}")
    result = run_processing_job(arguments, name, context, stop_event=execution.stop_event)
    record = execution.job_record(
        name, "ProcessingJob", result.status, result.log_path, result.failure_reason, Metrics=result.metrics
    )
    return result, [record]


def _training_job(execution, node, arguments, context) -> tuple[JobResult, list[dict]]:
    name = execution.job_name(node, arguments, "TrainingJobName")
    execution.update_step(node.name, Detail=f"job {name}")
    result = run_training_job(
        arguments, name, context, on_metrics=execution.epoch_reporter(node.name), stop_event=execution.stop_event
    )
    record = execution.job_record(
        name, "TrainingJob", result.status, result.log_path, result.failure_reason, Metrics=result.metrics
    )
    return result, [record]


def _tuning_job(execution, node, arguments, context) -> tuple[JobResult, list[dict]]:
    name = execution.job_name(node, arguments, "HyperParameterTuningJobName", limit=32)
    limits = arguments.get("HyperParameterTuningJobConfig", {}).get("ResourceLimits", {})
    result = run_tuning_job(
        arguments,
        name,
        context,
        state_dir=execution.run_dir / "tuning" / node.name,
        cpus=context.threads,
        on_trial=execution.trial_reporter(node.name, limits.get("MaxNumberOfTrainingJobs")),
        stop_event=execution.stop_event,
    )
    trials = [
        execution.job_record(
            trial["TrainingJobName"],
            "TrainingJob",
            trial["TrainingJobStatus"],
            trial.get("Log"),
            trial.get("FailureReason"),
            TunedHyperParameters=trial["TunedHyperParameters"],
            ObjectiveValue=trial.get("FinalHyperParameterTuningJobObjectiveMetric", {}).get("Value"),
        )
        for trial in result.properties.get("TrainingJobSummaries", [])
    ]
    return result, trials


#: The handler of each step type (also the step types that run locally).
STEP_HANDLERS: dict[str, Handler] = {
    "Processing": _job_step(_processing_job),
    "Training": _job_step(_training_job),
    "Tuning": _job_step(_tuning_job),
    "Condition": _condition,
    "Fail": _fail,
    "RegisterModel": _register_model,
    "Model": _model,
    "Lambda": _lambda,
    "Callback": _callback,
}
