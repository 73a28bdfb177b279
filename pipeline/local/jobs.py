"""Processing and training jobs run on this machine under SageMaker's container contract.

Each job gets a folder ``<jobs_dir>/<job name>/`` that stands for the container's file system: every
``/opt/ml/...`` path of the job (inputs, outputs, arguments, environment) is mapped to ``<job folder>/opt/ml/...``.
Its script runs as a subprocess of the current interpreter (``sys.executable``: the project's venv plays the
framework container; ``requirements.txt`` is not installed), with stdout and stderr merged into
``<jobs_dir>/<job name>.log`` and echoed line by line to a callback (the console).

Processing (``CreateProcessingJob`` arguments): ``S3Input``\\ s are copied from the store to their ``LocalPath``;
``ContainerEntrypoint`` is either ``python3 <script>`` (ScriptProcessor) or the FrameworkProcessor's
``/bin/bash .../runproc.sh``, whose ``python <script>`` line is read and whose ``tar -xzf sourcedir.tar.gz`` is done
here; on success every ``S3Output`` is uploaded (the prefix replaced).

Training (``CreateTrainingJob`` arguments, the SageMaker training toolkit's contract): channels in
``/opt/ml/input/data/<channel>`` and ``SM_CHANNEL_<CHANNEL>``; ``/opt/ml/input/config/{hyperparameters,
inputdataconfig,resourceconfig}.json``; ``SM_MODEL_DIR``, ``SM_OUTPUT_DATA_DIR``, ``SM_HPS``, ``SM_HP_<NAME>``,
``SM_NUM_GPUS=0``, ``SM_NUM_CPUS``, ``SM_HOSTS``, ``SM_CURRENT_HOST``, ``SM_CHECKPOINT_DIR``; the code from
``sagemaker_submit_directory`` extracted with tarfile's ``data`` filter and ``sagemaker_program`` run with the
decoded hyperparameters as ``--key value`` (``sagemaker_*`` keys skipped). On success ``SM_MODEL_DIR`` is packed to
``<S3OutputPath>/<TrainingJobName>/output/model.tar.gz`` and ``SM_OUTPUT_DATA_DIR`` to ``.../output/output.tar.gz``.
Metrics are parsed from the log with the job's own ``MetricDefinitions`` regexes, as SageMaker does.

Checkpoints, as SageMaker does (https://docs.aws.amazon.com/sagemaker/latest/dg/model-checkpoints.html): every
object under ``CheckpointConfig.S3Uri`` is restored into ``CheckpointConfig.LocalPath`` (default
``/opt/ml/checkpoints``) before the script starts, whichever job wrote it, and what the script writes there is
uploaded back to the same keys under ``S3Uri`` (after each metric line, which ``train.py`` prints once the epoch's
checkpoint is on disk, and when the job ends). Nothing keeps one job's checkpoints from the next job's: a script
that must not resume another job's run keeps its own in a subfolder (``train.py``: ``TRAINING_JOB_NAME``).
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.local.status import JobStatus, local_arn
from pipeline.local.store import Store, StoreError, atomic_write_json

CONTAINER_ROOT = "/opt/ml"
_CONTAINER_PATH = re.compile(r"(?<![\w/.])/opt/ml(?=/|$|\s|=)")
#: Seconds between SIGTERM and SIGKILL when a job is stopped (SageMaker gives 120 s; a local run need not wait).
STOP_GRACE_SECONDS = 10
HOST = "algo-1"
PR_SET_PDEATHSIG = 1  # linux/prctl.h

#: Called with each log line of a job; return True to stop the job (a pruned tuning trial).
LineCallback = Callable[[str], bool | None]
#: Called with (job name, line) to show a line on the console.
EchoCallback = Callable[[str, str], None]


class JobError(Exception):
    """A job that cannot start: unsupported arguments, missing input or code (the message says which)."""


@dataclass
class JobResult:
    """How a job ended: ``status`` is ``Completed``, ``Failed`` or ``Stopped`` (SageMaker's job statuses)."""

    status: str
    properties: dict
    failure_reason: str | None = None
    metrics: dict[str, list[float]] = field(default_factory=dict)
    log_path: str = ""


def job_arn(kind: str, name: str) -> str:
    """A local ARN in SageMaker's shape, e.g. ``arn:aws:sagemaker:us-east-1:000000000000:training-job/<name>``."""
    return local_arn(f"{kind}/{name}")


def map_container_paths(value: Any, root: Path) -> Any:
    """Rewrite every ``/opt/ml/...`` inside strings (also ``--flag=/opt/ml/x``) to ``<root>/opt/ml/...``."""
    if isinstance(value, str):
        return _CONTAINER_PATH.sub(lambda _m: str(root / "opt" / "ml"), value)
    if isinstance(value, list):
        return [map_container_paths(item, root) for item in value]
    if isinstance(value, dict):
        return {key: map_container_paths(item, root) for key, item in value.items()}
    return value


def container_path(path: str, root: Path) -> Path:
    """The local path of one container path (``/opt/ml/processing/train`` -> ``<root>/opt/ml/processing/train``)."""
    if not path.startswith(CONTAINER_ROOT + "/") and path != CONTAINER_ROOT:
        raise JobError(f"{path}: container paths must be under {CONTAINER_ROOT}/ (SageMaker's contract)")
    return root / path.lstrip("/")


def extract_code(archive: Path, destination: Path) -> None:
    """Extract a ``sourcedir.tar.gz`` with tarfile's ``data`` filter (no absolute paths, ``..``, devices, links out).

    Raises:
        JobError: the archive is not a tar file or holds a member the filter rejects (names it).
    """
    destination.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(destination, filter="data")
    except (tarfile.TarError, OSError) as error:
        raise JobError(f"{archive.name}: cannot extract the code archive safely: {error}") from error


def pack_folder(folder: Path, store: Store, uri: str) -> None:
    """Pack the contents of ``folder`` (entries relative to it, as SageMaker does) into ``uri`` as ``.tar.gz``."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=6) as tar:
        for path in sorted(folder.rglob("*")):
            if path.is_file() or (path.is_dir() and not any(path.iterdir())):
                tar.add(path, arcname=path.relative_to(folder).as_posix(), recursive=False)
    store.put_bytes(uri, buffer.getvalue())


def decode_hyperparameter(value: str) -> Any:
    """Decode one hyperparameter as the SageMaker training toolkit does: JSON when it parses, else the string."""
    try:
        return json.loads(value)
    except (TypeError, ValueError):
        return value


def hyperparameter_arguments(hyperparameters: dict[str, Any]) -> list[str]:
    """``--key value`` for every decoded hyperparameter except ``sagemaker_*`` ones (toolkit's ``to_cmd_args``)."""
    arguments = []
    for key, value in hyperparameters.items():
        if key.startswith("sagemaker_"):
            continue
        text = json.dumps(value) if isinstance(value, (dict, list)) else str(value)
        arguments += [f"--{key}", text]
    return arguments


def compile_metric_definitions(definitions: list[dict] | None) -> list[tuple[str, re.Pattern]]:
    """``[(name, compiled regex)]`` from a job's MetricDefinitions. Raises JobError on a bad regex."""
    compiled = []
    for definition in definitions or []:
        try:
            compiled.append((definition["Name"], re.compile(definition["Regex"])))
        except (KeyError, re.error) as error:
            raise JobError(f"MetricDefinitions entry {definition}: {error}") from error
    return compiled


def parse_metrics(line: str, compiled: list[tuple[str, re.Pattern]]) -> dict[str, float]:
    """Every metric whose regex matches ``line``: name -> the first group as a float (non-numbers skipped)."""
    found = {}
    for name, pattern in compiled:
        match = pattern.search(line)
        if match:
            try:
                found[name] = float(match.group(1) if pattern.groups else match.group(0))
            except (ValueError, IndexError):
                continue
    return found


def run_process(
    command: list[str],
    *,
    cwd: Path,
    env: dict[str, str],
    log_path: Path,
    on_line: LineCallback | None = None,
    stop_event: threading.Event | None = None,
) -> tuple[int, bool, list[str]]:
    """Run ``command``; stream its merged output to ``log_path`` and ``on_line``. Stop it when asked.

    The process gets its own session so that a stop (``on_line`` returning True, or ``stop_event`` set)
    reaches its DataLoader workers too: SIGTERM to its process group, SIGKILL after STOP_GRACE_SECONDS. On Linux
    it also gets SIGTERM when the thread that started it dies (``PR_SET_PDEATHSIG``), so a killed ``run-local``
    leaves no job running behind it (what ``--resume`` relies on).

    Returns ``(exit code, stopped, last 20 lines)``.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    tail: list[str] = []
    stopped = False
    with open(log_path, "a", encoding="utf-8", buffering=1) as log:
        process = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            errors="replace",
            bufsize=1,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        watcher = None
        if stop_event is not None:

            def watch():
                while process.poll() is None:
                    if stop_event.wait(0.5):
                        _terminate(process)
                        return

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
        try:
            for line in process.stdout:
                line = line.rstrip("\n")
                log.write(line + "\n")
                tail = (tail + [line])[-20:]
                if on_line is not None and on_line(line) and not stopped:
                    stopped = True
                    threading.Thread(target=_terminate, args=(process,), daemon=True).start()
        finally:
            returncode = process.wait()
    stopped = stopped or (returncode != 0 and stop_event is not None and stop_event.is_set())
    return returncode, stopped, tail


def _die_with_parent() -> None:
    """In the child before exec: ask Linux for SIGTERM when the parent thread exits (no-op elsewhere)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _kill_group(process: subprocess.Popen, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signum)


def _terminate(process: subprocess.Popen) -> None:
    """SIGTERM the job's process group (as SageMaker's StopTrainingJob does), SIGKILL if it lingers."""
    _kill_group(process, signal.SIGTERM)
    try:
        process.wait(timeout=STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        _kill_group(process, signal.SIGKILL)


def _now() -> float:
    return time.time()


@dataclass
class JobContext:
    """What every job needs: the ``store``, the folder of job folders and logs (``jobs_dir``), an ``echo`` for
    console lines, ``threads`` (CPU threads the job may use) and ``keep_job_dirs`` (keep folders of jobs that
    completed; failed jobs' folders are always kept for inspection)."""

    store: Store
    jobs_dir: Path
    echo: EchoCallback | None = None
    threads: int = 1
    keep_job_dirs: bool = False
    #: Set in every job's process, under the definition's own Environment: what the executor adds per execution
    #: outside the definition (the MLflow parent run, docs/tracking.md), so step cache keys stay the same.
    environment: dict[str, str] = field(default_factory=dict)

    def log_path(self, job_name: str) -> Path:
        return self.jobs_dir / f"{job_name}.log"

    def job_dir(self, job_name: str) -> Path:
        path = self.jobs_dir / job_name
        if path.exists():
            shutil.rmtree(path)  # a re-run (resume) starts from a clean container
        path.mkdir(parents=True)
        return path

    def line_handler(self, job_name: str, extra: LineCallback | None) -> LineCallback:
        def handle(line: str) -> bool | None:
            if self.echo is not None:
                self.echo(job_name, line)
            return extra(line) if extra is not None else None

        return handle

    def finish(self, root: Path, status: str) -> None:
        if status == JobStatus.COMPLETED and not self.keep_job_dirs:
            shutil.rmtree(root, ignore_errors=True)


# -- what processing and training jobs do alike: stage inputs, run the container, end ---------------------------
def _stage_input(store: Store, uri: str, destination: Path, what: str) -> None:
    """Copy every object under ``uri`` into ``destination`` (an S3Prefix input in File mode).

    Raises:
        StoreError: nothing under ``uri``; the message starts with ``what`` (e.g. ``training channel 'train'``).
    """
    destination.mkdir(parents=True, exist_ok=True)
    try:
        store.download(uri, destination)
    except StoreError as error:
        raise StoreError(f"{what}: {error}") from error


def _container_environment(context: JobContext, job_environment: dict[str, Any]) -> dict[str, str]:
    """A job process's environment: this process's (without PYTHONPATH: the job's code folder is its only import
    root, as in a container), unbuffered output, ``context.threads`` CPU threads, then ``context.environment``,
    then the job's own variables (which win)."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    threads = str(context.threads)
    env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    env.update({key: str(value) for key, value in {**context.environment, **job_environment}.items()})
    return env


@dataclass(frozen=True)
class _Exit:
    """How a job's process ended: its JobStatus, the FailureReason (None when it completed) and its last lines."""

    status: JobStatus
    reason: str | None
    tail: list[str]


def _run_container(
    context: JobContext,
    job_name: str,
    command: list[str],
    *,
    kind: str,
    program: str,
    cwd: Path,
    environment: dict[str, Any],
    on_line: LineCallback | None = None,
    stop_event: threading.Event | None = None,
    stop_reason: str = "stopped on request",
) -> _Exit:
    """Run a job's ``command`` in ``cwd`` with :func:`_container_environment` (``environment``: the job's own
    variables); its log starts with ``# <kind> job <name>: <command>``. A non-zero exit is an ``AlgorithmError``
    naming ``program`` and the last line it printed; a stop (``on_line`` returning True, ``stop_event``) ends
    ``Stopped`` with ``stop_reason``."""
    log_path = context.log_path(job_name)
    with open(log_path, "w", encoding="utf-8") as log:
        log.write(f"# {kind} job {job_name}: {' '.join(command)}\n")
    returncode, stopped, tail = run_process(
        command,
        cwd=cwd,
        env=_container_environment(context, environment),
        log_path=log_path,
        on_line=context.line_handler(job_name, on_line),
        stop_event=stop_event,
    )
    if stopped:
        return _Exit(JobStatus.STOPPED, stop_reason, tail)
    if returncode != 0:
        last = next((line.strip() for line in reversed(tail) if line.strip()), "")
        reason = f"AlgorithmError: {program} exited with code {returncode}" + (f": {last}" if last else "")
        return _Exit(JobStatus.FAILED, reason, tail)
    return _Exit(JobStatus.COMPLETED, None, tail)


def _job_result(
    context: JobContext, job_name: str, root: Path, end: _Exit, properties: dict, metrics: dict | None = None
) -> JobResult:
    """The JobResult of a job that ran (FailureReason added to ``properties``); its folder goes unless kept."""
    if end.reason:
        properties["FailureReason"] = end.reason
    context.finish(root, end.status)
    return JobResult(end.status, properties, end.reason, metrics or {}, str(context.log_path(job_name)))


# -- processing ------------------------------------------------------------------------------------------------
def _runproc_script(runproc: Path) -> str:
    """The script that a FrameworkProcessor's runproc.sh runs (its ``python <script> "$@"`` line)."""
    for line in runproc.read_text().splitlines():
        match = re.match(r"\s*python3?\s+(\S+)\s+\"\$@\"", line)
        if match:
            return match.group(1)
    raise JobError(f"{runproc}: no 'python <script> \"$@\"' line found in the FrameworkProcessor's runproc.sh")


def _processing_command(arguments: dict, root: Path) -> tuple[list[str], Path]:
    """``(command, cwd)`` for a processing job's AppSpecification, with container paths mapped."""
    app = arguments.get("AppSpecification", {})
    entrypoint = list(app.get("ContainerEntrypoint") or [])
    container_arguments = [str(a) for a in map_container_paths(app.get("ContainerArguments") or [], root)]
    if not entrypoint:
        raise JobError("AppSpecification has no ContainerEntrypoint: local mode runs script processors only")
    program = Path(entrypoint[0]).name
    if program in ("bash", "sh") and len(entrypoint) >= 2 and entrypoint[1].endswith(".sh"):
        runproc = container_path(entrypoint[1], root)
        if not runproc.is_file():
            raise JobError(f"{entrypoint[1]}: the entrypoint script is not among the job's inputs")
        script = _runproc_script(runproc)
        code_dir = container_path("/opt/ml/processing/input/code", root)
        archive = code_dir / "sourcedir.tar.gz"
        if archive.is_file():
            extract_code(archive, code_dir)
        if not (code_dir / script).is_file():
            raise JobError(f"{script}: not found in the job's code input (/opt/ml/processing/input/code)")
        return [sys.executable, script, *container_arguments], code_dir
    if program.startswith("python"):
        rest = [str(a) for a in map_container_paths(entrypoint[1:], root)]
        script = next((Path(a) for a in rest if a.endswith(".py")), None)
        if script is None or not script.is_file():
            raise JobError(f"{entrypoint}: the script is not among the job's inputs")
        return [sys.executable, *rest, *container_arguments], script.parent
    raise JobError(
        f"ContainerEntrypoint {entrypoint}: local mode runs python scripts only (python3 <script> or runproc.sh)"
    )


def run_processing_job(
    arguments: dict, job_name: str, context: JobContext, *, stop_event: threading.Event | None = None
) -> JobResult:
    """Run one processing job (resolved ``CreateProcessingJob`` arguments) as ``job_name``.

    Returns a JobResult whose ``properties`` follow DescribeProcessingJob (ProcessingJobName, ProcessingJobStatus,
    ProcessingInputs, ProcessingOutputConfig, AppSpecification, Environment, FailureReason, times).

    Raises:
        JobError: unsupported inputs (ManifestFile, Pipe mode, Gzip compression, dataset definitions).
        StoreError: an input URI with nothing behind it.
    """
    root = context.job_dir(job_name)
    start = _now()
    _stage_processing_inputs(arguments, root, context.store)
    outputs = _processing_outputs(arguments, root)
    _write_processing_config(arguments, job_name, root)
    command, cwd = _processing_command(arguments, root)
    end = _run_container(
        context,
        job_name,
        command,
        kind="processing",
        program=Path(command[1]).name,
        cwd=cwd,
        environment=map_container_paths(arguments.get("Environment") or {}, root),
        stop_event=stop_event,
    )
    if end.status == JobStatus.COMPLETED:
        for local_path, uri in outputs:
            context.store.upload_folder(local_path, uri)
    properties = {
        **arguments,
        "ProcessingJobName": job_name,
        "ProcessingJobArn": job_arn("processing-job", job_name),
        "ProcessingJobStatus": end.status,
        "ProcessingStartTime": start,
        "ProcessingEndTime": _now(),
        "ExitMessage": "\n".join(end.tail[-5:]),
    }
    return _job_result(context, job_name, root, end, properties)


def _stage_processing_inputs(arguments: dict, root: Path, store: Store) -> None:
    """Copy each ``ProcessingInputs[].S3Input`` to its ``LocalPath``. Raises JobError for what runs only on AWS."""
    for item in arguments.get("ProcessingInputs", []):
        s3 = item.get("S3Input")
        if s3 is None:
            raise JobError(f"ProcessingInput {item.get('InputName')}: only S3Input is supported locally")
        if s3.get("S3DataType", "S3Prefix") != "S3Prefix" or s3.get("S3CompressionType", "None") != "None":
            raise JobError(
                f"ProcessingInput {item.get('InputName')}: only S3Prefix inputs without compression run locally"
            )
        _stage_input(
            store, s3["S3Uri"], container_path(s3["LocalPath"], root), f"processing input {item.get('InputName')!r}"
        )


def _processing_outputs(arguments: dict, root: Path) -> list[tuple[Path, str]]:
    """``[(local folder, S3Uri)]`` of each ``S3Output``, the folders created empty for the script."""
    outputs = []
    for item in arguments.get("ProcessingOutputConfig", {}).get("Outputs", []):
        local_path = container_path(item["S3Output"]["LocalPath"], root)
        local_path.mkdir(parents=True, exist_ok=True)
        outputs.append((local_path, item["S3Output"]["S3Uri"]))
    return outputs


def _write_processing_config(arguments: dict, job_name: str, root: Path) -> None:
    """``/opt/ml/config/processingjobconfig.json`` (the job's arguments) and ``resourceconfig.json`` (one host)."""
    atomic_write_json(
        container_path("/opt/ml/config/processingjobconfig.json", root), {**arguments, "ProcessingJobName": job_name}
    )
    atomic_write_json(
        container_path("/opt/ml/config/resourceconfig.json", root), {"current_host": HOST, "hosts": [HOST]}
    )


# -- training ----------------------------------------------------------------------------------------------------
class CheckpointSync:
    """A training job's checkpoint folder kept in step with ``CheckpointConfig.S3Uri`` (see the module docstring).

    :meth:`restore` copies every object under ``uri`` into ``folder``; :meth:`upload` puts each file of
    ``folder`` that is new or changed since (size, mtime) under the same key below ``uri``. Files still being
    written atomically (``*.tmp``) are skipped.
    """

    def __init__(self, store: Store, uri: str, folder: Path):
        self.store, self.uri, self.folder = store, uri.rstrip("/"), folder
        self._seen: dict[Path, tuple[int, int]] = {}

    def _stamp(self, path: Path) -> tuple[int, int]:
        stat = path.stat()
        return stat.st_size, stat.st_mtime_ns

    def restore(self) -> int:
        """Copy every object under the checkpoint URI into the folder; returns how many (0 when there are none)."""
        objects = self.store.objects(self.uri + "/")
        for key, source in objects:
            target = self.folder / key
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
            self._seen[target] = self._stamp(target)
        return len(objects)

    def upload(self) -> int:
        """Upload the files that are new or changed since the last restore or upload; returns how many."""
        count = 0
        for path in sorted(self.folder.rglob("*")):
            if not path.is_file() or path.name.endswith(".tmp"):
                continue
            with contextlib.suppress(FileNotFoundError):  # replaced between the listing and the copy
                stamp = self._stamp(path)
                if self._seen.get(path) != stamp:
                    self.store.put_file(path, f"{self.uri}/{path.relative_to(self.folder).as_posix()}")
                    self._seen[path] = stamp
                    count += 1
        return count


def run_training_job(
    arguments: dict,
    job_name: str,
    context: JobContext,
    *,
    on_metrics: Callable[[dict[str, float]], bool | None] | None = None,
    stop_event: threading.Event | None = None,
) -> JobResult:
    """Run one training job (resolved ``CreateTrainingJob`` arguments) as ``job_name``.

    ``on_metrics(values)`` is called for each log line that matches a MetricDefinition (name -> value); return
    True to stop the job (its status becomes ``Stopped``, as a tuning job's early stopping does).

    Returns a JobResult whose ``properties`` follow DescribeTrainingJob (TrainingJobName, TrainingJobStatus,
    HyperParameters, ModelArtifacts.S3ModelArtifacts, FinalMetricDataList, OutputDataConfig, times...).

    Raises:
        JobError: no sagemaker_program / sagemaker_submit_directory, unsupported channel types, a bad
            MetricDefinitions regex, no OutputDataConfig.S3OutputPath.
        StoreError: a channel or the code archive is missing from the store.
    """
    root = context.job_dir(job_name)
    start = _now()
    code = _TrainingCode.of(arguments, job_name)
    output_path = _training_output_path(arguments, job_name)
    container = _TrainingContainer.create(root, arguments.get("CheckpointConfig") or {})
    _stage_code(code, job_name, container.code_dir, context.store)
    input_config = _stage_channels(arguments, container, context.store)
    checkpoints = _restore_checkpoints(arguments, container.checkpoint_dir, context.store)
    debug_hook = arguments.get("DebugHookConfig")
    _write_training_config(container, code, input_config, debug_hook)
    metrics = _MetricLog(
        arguments.get("AlgorithmSpecification", {}).get("MetricDefinitions"), checkpoints, on_metrics
    )
    end = _run_container(
        context,
        job_name,
        [sys.executable, code.program, *hyperparameter_arguments(code.hyperparameters)],
        kind="training",
        program=code.program,
        cwd=container.code_dir,
        environment=_training_environment(
            arguments, job_name, code, container, input_config, debug_hook, context.threads
        ),
        on_line=metrics.on_line,
        stop_event=stop_event,
        stop_reason="stopped by the tuning job's early stopping" if on_metrics else "stopped on request",
    )
    if checkpoints is not None:
        checkpoints.upload()
    model_uri = _collect_training_outputs(end.status, job_name, output_path, container, debug_hook, context.store)
    finished = _now()
    properties = {
        **arguments,
        "TrainingJobName": job_name,
        "TrainingJobArn": job_arn("training-job", job_name),
        "TrainingJobStatus": end.status,
        "SecondaryStatus": end.status,
        "HyperParameters": code.raw_hyperparameters,
        "TrainingStartTime": start,
        "TrainingEndTime": finished,
        "TrainingTimeInSeconds": int(round(finished - start)),
        "BillableTimeInSeconds": int(round(finished - start)),
        "FinalMetricDataList": metrics.final_metric_data(),
    }
    if model_uri is not None:
        properties["ModelArtifacts"] = {"S3ModelArtifacts": model_uri}
    return _job_result(context, job_name, root, end, properties, metrics.values)


@dataclass(frozen=True)
class _TrainingCode:
    """What a training job runs: ``program`` from the code archive ``submit_directory``, with ``hyperparameters``
    (decoded, ``sagemaker_*`` left out); ``raw_hyperparameters`` are the job's strings as given."""

    program: str
    submit_directory: str
    hyperparameters: dict[str, Any]
    raw_hyperparameters: dict[str, str]

    @classmethod
    def of(cls, arguments: dict, job_name: str) -> _TrainingCode:
        """Raises JobError when sagemaker_program or sagemaker_submit_directory (an S3 .tar.gz) is missing."""
        raw = {key: str(value) for key, value in (arguments.get("HyperParameters") or {}).items()}
        decoded = {key: decode_hyperparameter(value) for key, value in raw.items()}
        program, submit_directory = decoded.get("sagemaker_program"), decoded.get("sagemaker_submit_directory")
        if not program or not submit_directory:
            raise JobError(
                f"training job {job_name}: hyperparameters sagemaker_program and sagemaker_submit_directory are "
                "required (local mode runs framework script-mode estimators only)"
            )
        if not str(submit_directory).startswith("s3://") or not str(submit_directory).endswith(".tar.gz"):
            raise JobError(f"sagemaker_submit_directory {submit_directory!r}: expected the S3 URI of a .tar.gz")
        user = {key: value for key, value in decoded.items() if not key.startswith("sagemaker_")}
        return cls(str(program), str(submit_directory), user, raw)


def _training_output_path(arguments: dict, job_name: str) -> str:
    """``OutputDataConfig.S3OutputPath`` without a trailing slash. Raises JobError when there is none."""
    output_path = (arguments.get("OutputDataConfig") or {}).get("S3OutputPath", "").rstrip("/")
    if not output_path:
        raise JobError(f"training job {job_name}: OutputDataConfig.S3OutputPath is required")
    return output_path


@dataclass(frozen=True)
class _TrainingContainer:
    """The folders of a training container under ``<job folder>/opt/ml`` (SageMaker training toolkit's layout)."""

    opt_ml: Path
    checkpoint_dir: Path

    @classmethod
    def create(cls, root: Path, checkpoint_config: dict) -> _TrainingContainer:
        """Create code, input config, model, output data and checkpoint folders (CheckpointConfig.LocalPath)."""
        container = cls(
            root / "opt" / "ml", container_path(checkpoint_config.get("LocalPath") or "/opt/ml/checkpoints", root)
        )
        for folder in (container.code_dir, container.config_dir, container.model_dir, container.output_data_dir):
            folder.mkdir(parents=True, exist_ok=True)
        container.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        return container

    @property
    def code_dir(self) -> Path:
        return self.opt_ml / "code"

    @property
    def config_dir(self) -> Path:
        return self.opt_ml / "input" / "config"

    @property
    def model_dir(self) -> Path:
        return self.opt_ml / "model"

    @property
    def output_data_dir(self) -> Path:
        return self.opt_ml / "output" / "data"

    @property
    def tensors_dir(self) -> Path:
        return self.opt_ml / "output" / "tensors"

    def channel_dir(self, channel: str) -> Path:
        return self.opt_ml / "input" / "data" / channel


def _stage_code(code: _TrainingCode, job_name: str, code_dir: Path, store: Store) -> None:
    """Extract the code archive into ``code_dir``. Raises StoreError (no archive) or JobError (no program in it)."""
    archive = store.path(code.submit_directory)
    if not archive.is_file():
        raise StoreError(
            f"code archive {code.submit_directory} is not in the store (expected {archive}); run-local places the "
            "packed entrypoints/ there before running"
        )
    extract_code(archive, code_dir)
    if not (code_dir / code.program).is_file():
        raise JobError(f"training job {job_name}: {code.program} not found in {code.submit_directory}")


def _stage_channels(arguments: dict, container: _TrainingContainer, store: Store) -> dict[str, dict]:
    """Copy each ``InputDataConfig`` channel to ``/opt/ml/input/data/<channel>``; returns inputdataconfig.json's
    content (channel -> its config). Raises JobError for a channel type that runs only on AWS."""
    input_config = {}
    for channel in arguments.get("InputDataConfig", []):
        name = channel["ChannelName"]
        source = channel.get("DataSource", {}).get("S3DataSource")
        if source is None or source.get("S3DataType", "S3Prefix") != "S3Prefix":
            raise JobError(f"channel {name}: only S3Prefix S3DataSource channels run locally")
        if channel.get("CompressionType", "None") != "None" or channel.get("InputMode", "File") != "File":
            raise JobError(f"channel {name}: only File mode channels without compression run locally")
        _stage_input(store, source["S3Uri"], container.channel_dir(name), f"training channel {name!r}")
        input_config[name] = {
            "TrainingInputMode": "File",
            "S3DistributionType": source.get("S3DataDistributionType", "FullyReplicated"),
            "RecordWrapperType": "None",
        }
    return input_config


def _restore_checkpoints(arguments: dict, checkpoint_dir: Path, store: Store) -> CheckpointSync | None:
    """The job's CheckpointSync, restored (None without ``CheckpointConfig.S3Uri``)."""
    uri = (arguments.get("CheckpointConfig") or {}).get("S3Uri")
    if not uri:
        return None
    checkpoints = CheckpointSync(store, uri, checkpoint_dir)
    checkpoints.restore()
    return checkpoints


def _write_training_config(
    container: _TrainingContainer, code: _TrainingCode, input_config: dict, debug_hook: dict | None
) -> None:
    """``/opt/ml/input/config``: hyperparameters.json (the strings as given), inputdataconfig.json,
    resourceconfig.json and, with a DebugHookConfig, debughookconfig.json (its LocalPath: the tensors folder)."""
    config_dir = container.config_dir
    atomic_write_json(config_dir / "hyperparameters.json", code.raw_hyperparameters)
    atomic_write_json(config_dir / "inputdataconfig.json", input_config)
    atomic_write_json(
        config_dir / "resourceconfig.json", {"current_host": HOST, "hosts": [HOST], "network_interface_name": "eth0"}
    )
    if debug_hook:
        container.tensors_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(config_dir / "debughookconfig.json", {**debug_hook, "LocalPath": str(container.tensors_dir)})


def _training_environment(
    arguments: dict,
    job_name: str,
    code: _TrainingCode,
    container: _TrainingContainer,
    input_config: dict,
    debug_hook: dict | None,
    threads: int,
) -> dict[str, str]:
    """The training toolkit's ``SM_*`` variables (module docstring), ``SMDEBUG_CONFIG_FILE_PATH`` with a
    DebugHookConfig and ``TRAINING_JOB_NAME``, then the definition's ``Environment`` (which wins)."""
    env = {f"SM_CHANNEL_{name.upper().replace('-', '_')}": str(container.channel_dir(name)) for name in input_config}
    if debug_hook:
        env["SMDEBUG_CONFIG_FILE_PATH"] = str(container.config_dir / "debughookconfig.json")
    env.update(
        SM_MODEL_DIR=str(container.model_dir),
        SM_OUTPUT_DATA_DIR=str(container.output_data_dir),
        SM_OUTPUT_DIR=str(container.opt_ml / "output"),
        SM_INPUT_DIR=str(container.opt_ml / "input"),
        SM_INPUT_CONFIG_DIR=str(container.config_dir),
        SM_CHECKPOINT_DIR=str(container.checkpoint_dir),
        SM_CHANNELS=json.dumps(sorted(input_config)),
        SM_HPS=json.dumps(code.hyperparameters),
        SM_NUM_GPUS="0",
        SM_NUM_CPUS=str(threads),
        SM_HOSTS=json.dumps([HOST]),
        SM_CURRENT_HOST=HOST,
        SM_MODULE_DIR=code.submit_directory,
        SM_USER_ENTRY_POINT=code.program,
        SM_LOG_LEVEL="20",
        SM_USER_ARGS=json.dumps(hyperparameter_arguments(code.hyperparameters)),
        TRAINING_JOB_NAME=job_name,
    )
    for key, value in code.hyperparameters.items():
        env[f"SM_HP_{key.upper().replace('-', '_')}"] = (
            json.dumps(value) if isinstance(value, (dict, list)) else str(value)
        )
    env.update({key: str(value) for key, value in (arguments.get("Environment") or {}).items()})
    return env


class _MetricLog:
    """A training job's metrics, parsed from its log lines with its MetricDefinitions: ``values`` (name -> every
    value, in order) and the time of each metric's last value. After each metric line the checkpoints are
    uploaded (``train.py`` prints it once the epoch's checkpoint is on disk) and ``on_metrics`` is told."""

    def __init__(
        self,
        definitions: list[dict] | None,
        checkpoints: CheckpointSync | None,
        on_metrics: Callable[[dict[str, float]], bool | None] | None,
    ):
        self.compiled = compile_metric_definitions(definitions)
        self.checkpoints, self.on_metrics = checkpoints, on_metrics
        self.values: dict[str, list[float]] = {name: [] for name, _ in self.compiled}
        self.times: dict[str, float] = {}

    def on_line(self, line: str) -> bool | None:
        """A :data:`LineCallback`: True when ``on_metrics`` asks to stop the job."""
        found = parse_metrics(line, self.compiled)
        if not found:
            return None
        if self.checkpoints is not None:
            self.checkpoints.upload()
        for name, value in found.items():
            self.values[name].append(value)
            self.times[name] = _now()
        return self.on_metrics(found) if self.on_metrics is not None else None

    def final_metric_data(self) -> list[dict]:
        """DescribeTrainingJob's FinalMetricDataList: each metric's last value and when it was logged."""
        return [
            {"MetricName": name, "Value": values[-1], "Timestamp": self.times.get(name)}
            for name, values in self.values.items()
            if values
        ]


def _collect_training_outputs(
    status: JobStatus,
    job_name: str,
    output_path: str,
    container: _TrainingContainer,
    debug_hook: dict | None,
    store: Store,
) -> str | None:
    """Pack the model and output data of a completed job under ``<output_path>/<job>/output/`` and upload the
    Debugger tensors (when the hook wrote any); returns the model.tar.gz URI, None unless completed."""
    model_uri = None
    if status == JobStatus.COMPLETED:
        model_uri = f"{output_path}/{job_name}/output/model.tar.gz"
        pack_folder(container.model_dir, store, model_uri)
        pack_folder(container.output_data_dir, store, f"{output_path}/{job_name}/output/output.tar.gz")
    if debug_hook and debug_hook.get("S3OutputPath") and any(container.tensors_dir.rglob("*")):
        store.upload_folder(container.tensors_dir, f"{debug_hook['S3OutputPath'].rstrip('/')}/{job_name}/debug-output")
    return model_uri
