"""Local execution interruption: ``run-local`` SIGKILLed (its whole process group) during tuning, then
``run-local --resume <id>`` finishes without redoing finished work and with an intact store; a second run on the
same store while the first holds it is refused; no credential reaches the run's records, logs or report.

The definition is the real one (``python -m pipeline definition --local``), cut to its ``split`` and ``tune`` steps
so the test stays short: 16 px, 1 epoch, 2 sequential trials on 8 real digits per class (the kill comes during the
second, so the resume must keep the first as it was and run the second again).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow

TRIALS = 2
SETTINGS = ["--set", "training.image_size=16", "--set", "training.model=lenet",
            "--set", f"tuning.max_jobs={TRIALS}", "--set",
            "tuning.max_parallel_jobs=1", "--set", "tuning.ranges.epochs.min=1", "--set", "tuning.ranges.epochs.max=1",
            "--set", "tuning.early_stopping='Off'", "--set", "training.hyperparameters.debugger=false",
            "--set", "training.hyperparameters.amp=false"]
MARKERS = {"AWS_ACCESS_KEY_ID": "AKIAMARKERLOCAL55555", "AWS_SECRET_ACCESS_KEY": "marker-local-secret-7c1d",
           "AWS_SESSION_TOKEN": "marker-local-token-e9b4"}
KEPT_STEPS = ("split", "tune")


def cli(*args: str, **popen) -> subprocess.Popen:
    env = {**os.environ, **MARKERS, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "pipeline", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **popen)


def record(run_dir: Path) -> dict:
    return json.loads((run_dir / "execution.json").read_text(encoding="utf-8"))


def step(run_dir: Path, name: str) -> dict:
    return next(s for s in record(run_dir)["Steps"] if s["StepName"] == name)


def wait_for(condition, process: subprocess.Popen, what: str, timeout_s: float = 240.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            value = condition()
        except (FileNotFoundError, StopIteration, json.JSONDecodeError, KeyError):
            value = None  # not written yet (execution.json is replaced atomically, so never torn)
        if value:
            return value
        assert process.poll() is None, f"run-local ended before {what}:\n{process.stdout.read()}"
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def store_files(store: Path) -> dict[str, tuple[int, int]]:
    """Every file of the store (bookkeeping included) -> (size, mtime_ns); the .lock file excluded."""
    return {p.relative_to(store).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in store.rglob("*") if p.is_file() and not p.is_symlink() and p.name != ".lock"}


def assert_store_intact(store: Path) -> None:
    """Every JSON parses and every archive reads to its end: no torn file under a final name."""
    for path in store.rglob("*"):
        if not path.is_file() or path.name.endswith(".tmp"):
            continue
        if path.suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
        elif path.name.endswith(".tar.gz"):
            with tarfile.open(path) as archive:
                for member in archive.getmembers():
                    if member.isfile():
                        archive.extractfile(member).read()


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory):
    """Run, kill during tuning, check the lock meanwhile, resume; return what each phase saw."""
    from pipeline.build import build
    from pipeline.config import load_config
    from pipeline.local.store import Store
    from pipeline.sample_data import write_digits

    root = tmp_path_factory.mktemp("local-interruption")
    digits, store, runs = root / "digits", root / "store", root / "runs"
    write_digits(digits, per_class=8)
    built = build(load_config(overrides=SETTINGS[1::2], local=True))
    for uri, data in built.uploads.items():  # what `upsert` uploads and run-local places when it builds itself
        Store(store).put_bytes(uri, data)
    definition = json.loads(built.definition)
    definition["Steps"] = [s for s in definition["Steps"] if s["Name"] in KEPT_STEPS]
    cut = root / "definition.json"
    cut.write_text(json.dumps(definition), encoding="utf-8")
    common = ["--store", str(store), "--runs", str(runs), "--no-logs", "--cpus", "2"]

    first = cli("run-local", *common, "--definition", str(cut), "--data", str(digits), start_new_session=True)
    try:
        run_dir = wait_for(lambda: next(p for p in runs.iterdir() if (p / "execution.json").is_file()), first,
                           "execution.json")
        execution_id = run_dir.name
        # Meanwhile (execution.json is first written under the store's lock), a resume of the same execution and a
        # new execution on the same store must both be refused.
        others = {"resume": cli("run-local", *common, "--resume", execution_id),
                  "new": cli("run-local", *common, "--definition", str(cut))}
        refused = {name: (process.communicate(timeout=300)[0], process.returncode) for name, process in others.items()}
        # The tune step's Detail reads "1 done [001:Completed(...)] trial 2 of 2 started" while trial 2 runs.
        wait_for(lambda: "1 done" in step(run_dir, "tune")["Detail"] and f"trial 2 of {TRIALS}" in step(
            run_dir, "tune")["Detail"], first, "the first trial to finish and the second to start")
        time.sleep(2.0)  # into the second trial's start-up and training
        finished = sorted((run_dir / "jobs").glob("*-tune-*-001-*.log"))
        before_kill = {"split": step(run_dir, "split"), "finished": [p.name.removesuffix(".log") for p in finished],
                       "logs": {p.name: p.read_bytes() for p in finished}, "store": store_files(store),
                       "children": [c.pid for c in psutil.Process(first.pid).children(recursive=True)]}
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=60)
        killed_at = time.monotonic()
        while any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
                  for pid in before_kill["children"]) and time.monotonic() - killed_at < 60:
            time.sleep(0.1)
        before_kill["children_gone_after_s"] = time.monotonic() - killed_at
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    killed = record(run_dir)

    resumed = cli("run-local", *common, "--resume", execution_id)
    resumed_output, _ = resumed.communicate(timeout=600)
    return {"root": root, "store": store, "runs": runs, "run_dir": run_dir, "id": execution_id, "refused": refused,
            "before_kill": before_kill, "killed": killed, "resumed": resumed, "resumed_output": resumed_output}


@pytest.mark.parametrize("other", ["resume", "new"])
def test_a_second_run_on_a_held_store_is_refused(killed_and_resumed, other):
    output, status = killed_and_resumed["refused"][other]
    assert status == 2, output
    assert f"execution {killed_and_resumed['id']}" in output and "Traceback" not in output, output
    records = [p.parent.name for p in killed_and_resumed["runs"].glob("*/execution.json")]
    assert records == [killed_and_resumed["id"]]  # the refused run recorded no execution


def test_the_kill_left_the_store_intact_and_the_record_readable(killed_and_resumed):
    killed = killed_and_resumed["killed"]
    assert killed["PipelineExecutionStatus"] == "Executing"  # nobody was left to write the end
    statuses = {s["StepName"]: s["StepStatus"] for s in killed["Steps"]}
    assert statuses == {"split": "Succeeded", "tune": "Executing"}
    assert_store_intact(killed_and_resumed["store"])


def test_resume_finishes_without_redoing_finished_jobs(killed_and_resumed):
    output, run_dir = killed_and_resumed["resumed_output"], killed_and_resumed["run_dir"]
    assert killed_and_resumed["resumed"].returncode == 0, output
    final = record(run_dir)
    assert final["PipelineExecutionStatus"] == "Succeeded", output
    assert len(final["Attempts"]) == 2
    before = killed_and_resumed["before_kill"]
    split = step(run_dir, "split")
    assert split["StartTime"] == before["split"]["StartTime"] and split["EndTime"] == before["split"]["EndTime"]
    tune = step(run_dir, "tune")
    completed = [job for job in tune["Jobs"] if job["Status"] == "Completed"]
    assert len(completed) == TRIALS and len({job["JobName"] for job in completed}) == TRIALS
    assert len(before["finished"]) == 1
    for name in before["finished"]:  # kept as it was, not trained again: its log is byte for byte the same
        assert name in {job["JobName"] for job in completed}
        assert (run_dir / "jobs" / f"{name}.log").read_bytes() == before["logs"][f"{name}.log"]
    best = tune["Properties"]["BestTrainingJob"]["TrainingJobName"]
    assert best in {job["JobName"] for job in completed}
    assert_store_intact(killed_and_resumed["store"])
    # Every store object written before the kill by a finished step is unchanged (split outputs, code, trial 1).
    after = store_files(killed_and_resumed["store"])
    split_outputs = [key for key in before["store"] if "/split/" in key or key.endswith("sourcedir.tar.gz")]
    assert split_outputs
    for key in split_outputs:
        assert after.get(key) == before["store"][key], key


def test_no_process_of_the_killed_run_outlives_it(killed_and_resumed):
    """Trials run in their own process groups (so a pruned trial can be stopped alone), out of reach of a SIGKILL
    of run-local's group; they must still end with it (PR_SET_PDEATHSIG), not train on beside the resumed run."""
    before = killed_and_resumed["before_kill"]
    assert before["children"], "the kill found no trial process: it did not happen during tuning"
    assert before["children_gone_after_s"] < 10, before["children_gone_after_s"]


def test_no_credential_in_records_logs_store_or_report(killed_and_resumed):
    from pipeline.local.report import write_report

    write_report(killed_and_resumed["run_dir"])
    texts = [killed_and_resumed["resumed_output"], *(output for output, _ in killed_and_resumed["refused"].values())]
    for folder in (killed_and_resumed["run_dir"], killed_and_resumed["store"]):
        for path in folder.rglob("*"):
            if path.is_file() and not path.is_symlink() and path.stat().st_size < 5_000_000:
                texts.append(path.read_bytes().decode("utf-8", "replace"))
    assert (killed_and_resumed["run_dir"] / "report.html").is_file()
    for value in MARKERS.values():
        assert not any(value in text for text in texts), value
