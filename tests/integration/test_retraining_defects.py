"""The builder's old output locations reproduce issue 12's three retraining defects on the local executor (which
now has S3's and SageMaker caching's semantics); the current builder's definition does not.

The old behaviour is kept only here: :func:`old_definition` takes today's definition and rewrites it as the builder
wrote it before, every output location without the execution id (``.../split/train`` in every execution, the
train job's ``S3OutputPath`` too) and ``train.py``'s checkpoint at the root of ``/opt/ml/checkpoints`` (its
``TRAINING_JOB_NAME`` emptied in the training job's Environment, so it keeps ``checkpoint.pth`` where it did).

Three executions per builder, each builder on its own store, on real digits (all ten classes each time):

A. 6 images per digit at ``.../v1``;
B. new images arrived: 12 per digit (A's and 6 more) at ``.../v2``;
C. ``.../v2`` again once the cache has expired (every ``CacheConfig`` off), so tune and train run again.
"""

from __future__ import annotations

import json
import shutil
import tarfile

import pytest

from pipeline.build import build
from pipeline.config import load_config
from pipeline.local.executor import LocalExecution, RunOptions
from pipeline.local.registry import ModelRegistry
from pipeline.local.store import Store

pytestmark = pytest.mark.slow

BUCKET = "s3://sagemaker-image-classification"
# One epoch is enough: defect 2 is a resume after the last epoch (so not one epoch trained on the new data), which
# one epoch shows as well as many. Nothing here is about the model's accuracy, the Debugger rules (no smdebug hook
# in train; the debug step still runs its job) or --amp (no start-up probe).
EPOCHS = 1
SETTINGS = [
    "tuning.max_jobs=1", "tuning.max_parallel_jobs=1", f"tuning.ranges.epochs.min={EPOCHS}",
    f"tuning.ranges.epochs.max={EPOCHS}", "training.image_size=16", "training.model=lenet",
    "debugger.blocking_rules=[]",
    "training.hyperparameters.debugger=false", "training.hyperparameters.amp=false", "deploy.enabled=false",
]  # fmt: skip
EXECUTION_ID = {"Get": "Execution.PipelineExecutionId"}
SPLITS = ("train", "validation", "test")


def _without_execution_id(node):
    if isinstance(node, dict):
        return {key: _without_execution_id(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_without_execution_id(value) for value in node if value != EXECUTION_ID]
    return node


def old_definition(definition: dict) -> dict:
    """``definition`` as the old builder wrote it (see the module docstring)."""
    old = _without_execution_id(definition)
    train = next(step for step in old["Steps"] if step["Name"] == "train")
    train["Arguments"]["Environment"] = {**train["Arguments"].get("Environment", {}), "TRAINING_JOB_NAME": ""}
    return old


def _without_caching(definition: dict) -> dict:
    text = json.dumps(definition).replace('"Enabled": true', '"Enabled": false')
    return json.loads(text)


def _steps(record: dict) -> dict[str, dict]:
    return {step["StepName"]: step for step in record["Steps"]}


def _run(definition: dict, root, data, uri: str, uploads: dict) -> dict:
    options = RunOptions(store=root / "store", runs=root / "runs", cpus=2, uploads=uploads, links={uri: data},
                         parameters={"InputDataUri": uri, "AccuracyThreshold": "0.0"})  # fmt: skip
    record = LocalExecution.start(definition, options, "image-classification").run()
    assert record["PipelineExecutionStatus"] == "Succeeded", record.get("FailureReason")
    return record


@pytest.fixture(scope="module")
def executions(tmp_path_factory):
    from pipeline.sample_data import write_digits

    root = tmp_path_factory.mktemp("defects")
    v1, v2 = root / "v1", root / "v2"
    write_digits(v2, per_class=12)
    for folder in v2.iterdir():  # v1: the first 6 of each digit, so v2 = v1 and 6 new images per digit
        (v1 / folder.name).mkdir(parents=True)
        for image in sorted(folder.iterdir())[:6]:
            shutil.copy2(image, v1 / folder.name / image.name)
    built = build(load_config(None, SETTINGS, local=True))
    current = json.loads(built.definition)
    results = {}
    for name, definition in (("old", old_definition(current)), ("new", current)):
        base = root / name
        results[name] = {
            "store": Store(base / "store"),
            "runs": base / "runs",
            "A": _run(definition, base, v1, f"{BUCKET}/data/v1", built.uploads),
            "B": _run(definition, base, v2, f"{BUCKET}/data/v2", built.uploads),
            "C": _run(_without_caching(definition), base, v2, f"{BUCKET}/data/v2", built.uploads),
        }
    return results


def _split_keys(store: Store, record: dict) -> tuple[dict[str, set[str]], dict]:
    outputs = _steps(record)["split"]["Properties"]["ProcessingOutputConfig"]["Outputs"]
    uris = {o["OutputName"]: o["S3Output"]["S3Uri"] for o in outputs}
    keys = {split: {key for key, _ in store.objects(uris[split])} for split in SPLITS}
    return keys, store.read_json(f"{uris['manifest']}/manifest.json")


def _model_url(record: dict) -> str:
    return _steps(record)["train"]["Properties"]["ModelArtifacts"]["S3ModelArtifacts"]


def _train_log(result: dict, record: dict) -> str:
    job = _steps(record)["train"]["Jobs"][0]
    return (result["runs"] / record["PipelineExecutionId"] / job["Log"]).read_text()


def _test_images(result: dict, version: int) -> int:
    registry = ModelRegistry(result["store"])
    package = registry.describe_model_package(f"image-classification/{version}")
    return registry.model_metrics(package)["ModelQuality.Statistics"]["test_images"]


def test_defect_1_old_prefixes_mix_the_splits_and_re_register_the_old_model(executions):
    old = executions["old"]
    keys, manifest = _split_keys(old["store"], old["B"])
    assert len(keys["train"]) > manifest["totals"]["train"]  # A's files are still under the prefix
    assert keys["train"] & keys["test"]  # an image A trained on is in B's test split
    steps = _steps(old["B"])
    assert steps["split"]["CacheHitResult"] is None
    for name in ("tune", "train", "evaluate"):  # same input URIs -> cache hits on A's old data
        assert steps[name]["CacheHitResult"]["SourcePipelineExecutionArn"] == old["A"]["PipelineExecutionArn"], name
    assert _model_url(old["B"]) == _model_url(old["A"])  # version 2 is the old model again

    new = executions["new"]
    keys, manifest = _split_keys(new["store"], new["B"])
    assert {split: len(keys[split]) for split in SPLITS} == manifest["totals"]
    assert not keys["train"] & keys["test"]
    assert all(_steps(new["B"])[name]["CacheHitResult"] is None for name in ("split", "tune", "train", "evaluate"))
    assert _model_url(new["B"]) != _model_url(new["A"])


def test_defect_2_the_old_fixed_checkpoint_resumes_the_previous_run_and_trains_zero_epochs(executions):
    old, new = executions["old"], executions["new"]
    assert _steps(old["C"])["train"]["CacheHitResult"] is None
    log = _train_log(old, old["C"])
    assert f"resumed from checkpoint after epoch {EPOCHS}" in log
    assert "epoch=1 " not in log  # not one epoch trained on the new data
    log = _train_log(new, new["C"])
    assert "resumed from checkpoint" not in log
    assert all(f"epoch={epoch} " in log for epoch in range(1, EPOCHS + 1))
    with tarfile.open(new["store"].path(_model_url(new["C"]))) as archive:
        assert len(json.load(archive.extractfile("classes.json"))) == 10


def test_defect_3_old_packages_all_show_the_last_evaluation(executions):
    old, new = executions["old"], executions["new"]
    registry = ModelRegistry(old["store"])
    uris = {registry.describe_model_package(f"image-classification/{v}")["ModelMetrics"]["ModelQuality"][
        "Statistics"]["S3Uri"] for v in (1, 2, 3)}  # fmt: skip
    assert len(uris) == 1  # one evaluation.json for every version
    assert _test_images(old, 1) == _test_images(old, 3) > _split_keys(old["store"], old["A"])[1]["totals"]["test"]
    # the current builder: version 1 still shows A's own evaluation after B and C
    assert _test_images(new, 1) == _split_keys(new["store"], new["A"])[1]["totals"]["test"]
    assert _test_images(new, 3) == _split_keys(new["store"], new["C"])[1]["totals"]["test"]
