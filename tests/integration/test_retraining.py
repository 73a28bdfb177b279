"""Scheduled retraining end to end, on real digits: three ``run-local`` executions of the real definition, one store.

1. the digits 0-7 at ``InputDataUri`` ``.../retrain-v1`` (only the first few of each: nothing is asserted about this
   model but its eight classes and its own metrics);
2. new images arrived: all ten digits at ``.../retrain-v2`` (new data goes under a new URI: SageMaker's cache key
   holds the URI, not the bytes behind it);
3. the scheduled run again with nothing new (same URI).

Execution 2 must re-run every job step and register a ten-class model as version 2 that answers 9 for a 9, with
splits holding only its own files; execution 3 must take every job step from the cache (naming execution 2),
register version 3 of the same artifacts (RegisterModel is never cached) and leave the endpoint alone.
The same commands, at full size, are in docs/local-mode.md ("Retraining").
"""

from __future__ import annotations

import json
import shutil
import tarfile
import time
from collections import Counter

import httpx
import pytest

from pipeline.cli import main
from pipeline.local.registry import ModelRegistry, resolve_model_package
from pipeline.local.report import write_report
from pipeline.local.store import Store
from pipeline.serving.server import start_in_background

pytestmark = pytest.mark.slow

BUCKET = "s3://sagemaker-image-classification"
PER_CLASS = 20
FIRST_PER_CLASS = 5  # execution 1: 3 train, 1 validation, 1 test image per digit (split.py keeps one of each)
JOB_STEPS = ("split", "tune", "train", "debug", "evaluate")
SPLITS = ("train", "validation", "test")
# Small: one tuning job of the LeNet, 28 px, a few epochs (enough for a model that tells a 9 from the rest on its
# own images).
# No smdebug hook in train (the debug step still runs its job; no rule blocks, none is asserted on) and no --amp
# probe: neither is what this module tests, and both cost training time.
SETTINGS = [
    "--set", "training.image_size=28", "--set", "training.model=lenet",
    "--set", "tuning.max_jobs=1", "--set", "tuning.max_parallel_jobs=1",
    "--set", "tuning.ranges.epochs.min=5", "--set", "tuning.ranges.epochs.max=5",
    "--set", "tuning.ranges.batch-size.values=[16]",
    "--set", "tuning.ranges.lr.min=0.03", "--set", "tuning.ranges.lr.max=0.03",
    "--set", "training.hyperparameters.augment=none",
    "--set", "debugger.blocking_rules=[]", "--set", "training.hyperparameters.debugger=false",
    "--set", "training.hyperparameters.amp=false",
]  # fmt: skip


def _steps(record: dict) -> dict[str, dict]:
    return {step["StepName"]: step for step in record["Steps"]}


def _source(step: dict) -> str | None:
    arn = (step.get("CacheHitResult") or {}).get("SourcePipelineExecutionArn")
    return arn.rsplit("/", 1)[-1] if arn else None


@pytest.fixture(scope="module")
def retraining(tmp_path_factory):
    from pipeline.sample_data import write_digits

    root = tmp_path_factory.mktemp("retraining")
    ten, eight = root / "digits", root / "digits-0-7"
    write_digits(ten, per_class=PER_CLASS)
    for folder in sorted(ten.iterdir())[:8]:
        (eight / folder.name).mkdir(parents=True)
        for image in sorted(folder.iterdir())[:FIRST_PER_CLASS]:
            shutil.copy2(image, eight / folder.name / image.name)
    store, runs = root / "store", root / "runs"
    common = ["run-local", "--store", str(store), "--runs", str(runs), "--no-logs", "--cpus", "2", *SETTINGS,
              "--param", "AccuracyThreshold=0.0"]  # fmt: skip
    executions = []
    for data, uri in ((eight, f"{BUCKET}/data/retrain-v1"), (ten, f"{BUCKET}/data/retrain-v2"),
                      (ten, f"{BUCKET}/data/retrain-v2")):  # fmt: skip
        before = {p.name for p in runs.iterdir()} if runs.is_dir() else set()
        start = time.monotonic()
        status = main([*common, "--data", str(data), "--param", f"InputDataUri={uri}"])
        wall = time.monotonic() - start
        (new_id,) = {p.name for p in runs.iterdir() if (p / "execution.json").is_file()} - before
        record = json.loads((runs / new_id / "execution.json").read_text())
        assert status == 0, record.get("FailureReason")
        executions.append({"record": record, "wall_s": wall, "run_dir": runs / new_id})
    print("\n".join(f"execution {i + 1}: {e['wall_s']:.1f} s\n{(e['run_dir'] / 'summary.txt').read_text()}"
                    for i, e in enumerate(executions)))  # fmt: skip
    return {"store": Store(store), "digits": ten, "executions": executions}


def _package(retraining, index: int) -> dict:
    register = _steps(retraining["executions"][index]["record"])["register-RegisterModel"]
    return ModelRegistry(retraining["store"]).describe_model_package(register["Properties"]["ModelPackageArn"])


def _classes(store: Store, package: dict) -> list[str]:
    url = package["InferenceSpecification"]["Containers"][0]["ModelDataUrl"]
    with tarfile.open(store.path(url)) as archive:
        return json.load(archive.extractfile("classes.json"))


def test_new_data_reruns_every_job_step_and_registers_a_ten_class_version_2(retraining):
    first, second = (e["record"] for e in retraining["executions"][:2])
    steps = _steps(second)
    for name in JOB_STEPS:
        assert steps[name]["StepStatus"] == "Succeeded" and steps[name]["CacheHitResult"] is None, name
        assert steps[name]["Jobs"], f"{name} ran no job"
    store = retraining["store"]
    one, two = _package(retraining, 0), _package(retraining, 1)
    assert (one["ModelPackageVersion"], two["ModelPackageVersion"]) == (1, 2)
    assert len(_classes(store, one)) == 8 and len(_classes(store, two)) == 10
    # each version's metrics are its own execution's evaluation.json, and stay so
    registry = ModelRegistry(store)
    uris = [p["ModelMetrics"]["ModelQuality"]["Statistics"]["S3Uri"] for p in (one, two)]
    assert [first["PipelineExecutionId"] in uris[0], second["PipelineExecutionId"] in uris[1]] == [True, True]
    evaluated = [registry.model_metrics(p)["ModelQuality.Statistics"] for p in (one, two)]
    assert [len(e["confusion_matrix"]["labels"]) for e in evaluated] == [8, 10]


def test_the_second_execution_splits_hold_only_its_own_files(retraining):
    store = retraining["store"]
    first, second = (_steps(e["record"])["split"]["Properties"] for e in retraining["executions"][:2])
    uris = {o["OutputName"]: o["S3Output"]["S3Uri"] for o in second["ProcessingOutputConfig"]["Outputs"]}
    manifest = store.read_json(f"{uris['manifest']}/manifest.json")
    keys = {split: {key for key, _ in store.objects(uris[split])} for split in SPLITS}
    for split in SPLITS:
        assert len(keys[split]) == manifest["totals"][split], split  # nothing else under the prefix
    assert not (keys["train"] & keys["test"]) and not (keys["train"] & keys["validation"])
    earlier = {o["S3Output"]["S3Uri"] for o in first["ProcessingOutputConfig"]["Outputs"]}
    assert not any(uri.startswith(old) or old.startswith(uri) for uri in uris.values() for old in earlier)
    assert sum(manifest["totals"].values()) == 10 * PER_CLASS


def test_the_endpoint_now_answers_nine_for_a_nine(retraining):
    steps = _steps(retraining["executions"][1]["record"])
    assert steps["deploy"]["Properties"]["OutputParameters"]["status"] == "InService"
    store = retraining["store"]
    resolved = resolve_model_package(store.root, steps["register-RegisterModel"]["Properties"]["ModelPackageArn"])
    train_uri = next(o["S3Output"]["S3Uri"] for o in steps["split"]["Properties"]["ProcessingOutputConfig"]["Outputs"]
                     if o["OutputName"] == "train")  # fmt: skip
    nines = [path for key, path in store.objects(train_uri) if key.startswith("9_nine/")]
    labels = Counter()
    log = retraining["executions"][1]["run_dir"] / "test-endpoint.log"
    with start_in_background(resolved["model_path"], sha256=resolved["sha256"], log_path=log) as endpoint:
        for image in nines:
            response = httpx.post(f"{endpoint.url}/invocations", content=image.read_bytes(), timeout=60,
                                  headers={"Content-Type": "image/png", "Accept": "application/json"})  # fmt: skip
            assert response.status_code == 200, response.text
            labels[response.json()["predictions"][0][0]["label"]] += 1
    assert labels.most_common(1)[0][0] == "9_nine", labels


def test_a_run_with_nothing_new_takes_every_job_step_from_the_cache_and_leaves_the_endpoint(retraining):
    second, third = (e["record"] for e in retraining["executions"][1:])
    steps, earlier = _steps(third), _steps(second)
    for name in JOB_STEPS:
        assert _source(steps[name]) == second["PipelineExecutionId"], name
        assert steps[name]["Properties"] == earlier[name]["Properties"] and not steps[name]["Jobs"]
    assert not list((retraining["executions"][2]["run_dir"] / "jobs").glob("*.log"))  # no job ran at all
    summary = (retraining["executions"][2]["run_dir"] / "summary.txt").read_text()
    assert summary.count(f"cache hit: {second['PipelineExecutionId']}") == len(JOB_STEPS)
    # the report's cache-hit column names the source execution of each job step
    report = write_report(retraining["executions"][2]["run_dir"]).read_text()
    assert report.count(f"<td>from {second['PipelineExecutionId']}</td>") == len(JOB_STEPS)
    # RegisterModel is never cached: version 3 of the very same artifacts and metrics
    two, three = _package(retraining, 1), _package(retraining, 2)
    assert three["ModelPackageVersion"] == 3 and steps["register-RegisterModel"]["CacheHitResult"] is None
    assert three["InferenceSpecification"] == two["InferenceSpecification"]
    assert three["ModelMetrics"] == two["ModelMetrics"]
    assert steps["deploy"]["Properties"]["OutputParameters"]["status"] == "Unchanged"
    assert "already serves" in steps["deploy"]["Detail"]
    # the pipeline's last word on the endpoint: Unchanged is a success, with the deploy step's reason
    outcome = steps["endpoint_outcome"]
    assert outcome["StepStatus"] == "Succeeded" and outcome["Properties"]["OutputParameters"]["status"] == "Unchanged"
    assert "already serves" in outcome["Properties"]["OutputParameters"]["reason"]
