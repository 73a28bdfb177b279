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


def _failure_reason(prefix: str, returncode: int, tail: list[str]) -> str:
    last = next((line.strip() for line in reversed(tail) if line.strip()), "")
    return f"AlgorithmError: {prefix} exited with code {returncode}" + (f": {last}" if last else "")


def _base_env(extra: dict[str, str], threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # the job's code folder is its only import root, as in a container
    env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env.update({key: str(value) for key, value in extra.items()})
    return env


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
    log_path = context.log_path(job_name)
    start = _now()
    for item in arguments.get("ProcessingInputs", []):
        s3 = item.get("S3Input")
        if s3 is None:
            raise JobError(f"ProcessingInput {item.get('InputName')}: only S3Input is supported locally")
        if s3.get("S3DataType", "S3Prefix") != "S3Prefix" or s3.get("S3CompressionType", "None") != "None":
            raise JobError(
                f"ProcessingInput {item.get('InputName')}: only S3Prefix inputs without compression run locally"
            )
        destination = container_path(s3["LocalPath"], root)
        destination.mkdir(parents=True, exist_ok=True)
        try:
            context.store.download(s3["S3Uri"], destination)
        except StoreError as error:
            raise StoreError(f"processing input {item.get('InputName')!r}: {error}") from error
    outputs = arguments.get("ProcessingOutputConfig", {}).get("Outputs", [])
    for item in outputs:
        container_path(item["S3Output"]["LocalPath"], root).mkdir(parents=True, exist_ok=True)
    atomic_write_json(
        container_path("/opt/ml/config/processingjobconfig.json", root), {**arguments, "ProcessingJobName": job_name}
    )
    atomic_write_json(
        container_path("/opt/ml/config/resourceconfig.json", root), {"current_host": HOST, "hosts": [HOST]}
    )
    command, cwd = _processing_command(arguments, root)
    env = _base_env(
        {**context.environment, **map_container_paths(arguments.get("Environment") or {}, root)}, context.threads
    )
    with open(log_path, "w", encoding="utf-8") as log:
        log.write(f"# processing job {job_name}: {' '.join(command)}\n")
    returncode, stopped, tail = run_process(
        command,
        cwd=cwd,
        env=env,
        log_path=log_path,
        on_line=context.line_handler(job_name, None),
        stop_event=stop_event,
    )
    status, reason = JobStatus.COMPLETED, None
    if stopped:
        status, reason = JobStatus.STOPPED, "stopped on request"
    elif returncode != 0:
        status, reason = JobStatus.FAILED, _failure_reason(Path(command[1]).name, returncode, tail)
    else:
        for item in outputs:
            context.store.upload_folder(
                container_path(item["S3Output"]["LocalPath"], root), item["S3Output"]["S3Uri"]
            )
    end = _now()
    properties = {
        **arguments,
        "ProcessingJobName": job_name,
        "ProcessingJobArn": job_arn("processing-job", job_name),
        "ProcessingJobStatus": status,
        "ProcessingStartTime": start,
        "ProcessingEndTime": end,
        "ExitMessage": "\n".join(tail[-5:]),
    }
    if reason:
        properties["FailureReason"] = reason
    context.finish(root, status)
    return JobResult(status, properties, reason, log_path=str(log_path))


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
        JobError: no sagemaker_program / sagemaker_submit_directory, unsupported channel types.
        StoreError: a channel or the code archive is missing from the store.
    """
    root = context.job_dir(job_name)
    log_path = context.log_path(job_name)
    start = _now()
    raw_hyperparameters = {key: str(value) for key, value in (arguments.get("HyperParameters") or {}).items()}
    hyperparameters = {key: decode_hyperparameter(value) for key, value in raw_hyperparameters.items()}
    program = hyperparameters.get("sagemaker_program")
    submit_directory = hyperparameters.get("sagemaker_submit_directory")
    if not program or not submit_directory:
        raise JobError(
            f"training job {job_name}: hyperparameters sagemaker_program and sagemaker_submit_directory are required "
            "(local mode runs framework script-mode estimators only)"
        )
    opt_ml = root / "opt" / "ml"
    code_dir, config_dir = opt_ml / "code", opt_ml / "input" / "config"
    model_dir, output_data_dir = opt_ml / "model", opt_ml / "output" / "data"
    for folder in (code_dir, config_dir, model_dir, output_data_dir):
        folder.mkdir(parents=True, exist_ok=True)
    if not str(submit_directory).startswith("s3://") or not str(submit_directory).endswith(".tar.gz"):
        raise JobError(f"sagemaker_submit_directory {submit_directory!r}: expected the S3 URI of a .tar.gz")
    archive = context.store.path(submit_directory)
    if not archive.is_file():
        raise StoreError(
            f"code archive {submit_directory} is not in the store (expected {archive}); run-local places the packed "
            "entrypoints/ there before running"
        )
    extract_code(archive, code_dir)
    if not (code_dir / program).is_file():
        raise JobError(f"training job {job_name}: {program} not found in {submit_directory}")

    env: dict[str, str] = {}
    channels = []
    input_config = {}
    for channel in arguments.get("InputDataConfig", []):
        name = channel["ChannelName"]
        source = channel.get("DataSource", {}).get("S3DataSource")
        if source is None or source.get("S3DataType", "S3Prefix") != "S3Prefix":
            raise JobError(f"channel {name}: only S3Prefix S3DataSource channels run locally")
        if channel.get("CompressionType", "None") != "None" or channel.get("InputMode", "File") != "File":
            raise JobError(f"channel {name}: only File mode channels without compression run locally")
        destination = opt_ml / "input" / "data" / name
        destination.mkdir(parents=True, exist_ok=True)
        try:
            context.store.download(source["S3Uri"], destination)
        except StoreError as error:
            raise StoreError(f"training channel {name!r}: {error}") from error
        channels.append(name)
        env[f"SM_CHANNEL_{name.upper().replace('-', '_')}"] = str(destination)
        input_config[name] = {
            "TrainingInputMode": "File",
            "S3DistributionType": source.get("S3DataDistributionType", "FullyReplicated"),
            "RecordWrapperType": "None",
        }

    checkpoint_config = arguments.get("CheckpointConfig") or {}
    checkpoint_dir = container_path(checkpoint_config.get("LocalPath") or "/opt/ml/checkpoints", root)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    checkpoints = CheckpointSync(context.store, checkpoint_config["S3Uri"], checkpoint_dir) \
        if checkpoint_config.get("S3Uri") else None
    if checkpoints is not None:
        checkpoints.restore()

    atomic_write_json(config_dir / "hyperparameters.json", raw_hyperparameters)
    atomic_write_json(config_dir / "inputdataconfig.json", input_config)
    atomic_write_json(
        config_dir / "resourceconfig.json", {"current_host": HOST, "hosts": [HOST], "network_interface_name": "eth0"}
    )
    debug_hook = arguments.get("DebugHookConfig")
    tensors_dir = opt_ml / "output" / "tensors"
    if debug_hook:
        tensors_dir.mkdir(parents=True, exist_ok=True)
        hook_config = {**debug_hook, "LocalPath": str(tensors_dir)}
        atomic_write_json(config_dir / "debughookconfig.json", hook_config)
        env["SMDEBUG_CONFIG_FILE_PATH"] = str(config_dir / "debughookconfig.json")

    user_hyperparameters = {k: v for k, v in hyperparameters.items() if not k.startswith("sagemaker_")}
    env.update(
        SM_MODEL_DIR=str(model_dir),
        SM_OUTPUT_DATA_DIR=str(output_data_dir),
        SM_OUTPUT_DIR=str(opt_ml / "output"),
        SM_INPUT_DIR=str(opt_ml / "input"),
        SM_INPUT_CONFIG_DIR=str(config_dir),
        SM_CHECKPOINT_DIR=str(checkpoint_dir),
        SM_CHANNELS=json.dumps(sorted(channels)),
        SM_HPS=json.dumps(user_hyperparameters),
        SM_NUM_GPUS="0",
        SM_NUM_CPUS=str(context.threads),
        SM_HOSTS=json.dumps([HOST]),
        SM_CURRENT_HOST=HOST,
        SM_MODULE_DIR=str(submit_directory),
        SM_USER_ENTRY_POINT=str(program),
        SM_LOG_LEVEL="20",
        SM_USER_ARGS=json.dumps(hyperparameter_arguments(user_hyperparameters)),
        TRAINING_JOB_NAME=job_name,
    )
    for key, value in user_hyperparameters.items():
        env[f"SM_HP_{key.upper().replace('-', '_')}"] = (
            json.dumps(value) if isinstance(value, (dict, list)) else str(value)
        )
    env.update({k: str(v) for k, v in (arguments.get("Environment") or {}).items()})

    command = [sys.executable, str(program), *hyperparameter_arguments(user_hyperparameters)]
    compiled = compile_metric_definitions(arguments.get("AlgorithmSpecification", {}).get("MetricDefinitions"))
    metrics: dict[str, list[float]] = {name: [] for name, _ in compiled}
    metric_times: dict[str, float] = {}

    def on_line(line: str) -> bool | None:
        values = parse_metrics(line, compiled)
        if not values:
            return None
        if checkpoints is not None:
            checkpoints.upload()
        for name, value in values.items():
            metrics[name].append(value)
            metric_times[name] = _now()
        return on_metrics(values) if on_metrics is not None else None

    with open(log_path, "w", encoding="utf-8") as log:
        log.write(f"# training job {job_name}: {' '.join(command)}\n")
    returncode, stopped, tail = run_process(
        command,
        cwd=code_dir,
        env=_base_env({**context.environment, **env}, context.threads),
        log_path=log_path,
        on_line=context.line_handler(job_name, on_line),
        stop_event=stop_event,
    )
    if checkpoints is not None:
        checkpoints.upload()
    status, reason = "Completed", None
    if stopped:
        status, reason = (
            "Stopped",
            "stopped by the tuning job's early stopping" if on_metrics else "stopped on request",
        )
    elif returncode != 0:
        status, reason = "Failed", _failure_reason(program, returncode, tail)
    output_path = (arguments.get("OutputDataConfig") or {}).get("S3OutputPath", "").rstrip("/")
    if not output_path:
        raise JobError(f"training job {job_name}: OutputDataConfig.S3OutputPath is required")
    model_uri = f"{output_path}/{job_name}/output/model.tar.gz"
    if status == "Completed":
        pack_folder(model_dir, context.store, model_uri)
        pack_folder(output_data_dir, context.store, f"{output_path}/{job_name}/output/output.tar.gz")
    if debug_hook and debug_hook.get("S3OutputPath") and any(tensors_dir.rglob("*")):
        target = f"{debug_hook['S3OutputPath'].rstrip('/')}/{job_name}/debug-output"
        context.store.upload_folder(tensors_dir, target)
    end = _now()
    properties = {
        **arguments,
        "TrainingJobName": job_name,
        "TrainingJobArn": job_arn("training-job", job_name),
        "TrainingJobStatus": status,
        "SecondaryStatus": status,
        "HyperParameters": raw_hyperparameters,
        "TrainingStartTime": start,
        "TrainingEndTime": end,
        "TrainingTimeInSeconds": int(round(end - start)),
        "BillableTimeInSeconds": int(round(end - start)),
        "FinalMetricDataList": [
            {"MetricName": name, "Value": values[-1], "Timestamp": metric_times.get(name)}
            for name, values in metrics.items()
            if values
        ],
    }
    if status == "Completed":
        properties["ModelArtifacts"] = {"S3ModelArtifacts": model_uri}
    if reason:
        properties["FailureReason"] = reason
    context.finish(root, status)
    return JobResult(status, properties, reason, metrics, str(log_path))
