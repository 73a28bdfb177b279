"""Processing and training jobs under SageMaker's container contract, with small real scripts."""

from __future__ import annotations

import io
import json
import tarfile
import textwrap

import pytest

from pipeline.local.jobs import (
    JobContext,
    JobError,
    decode_hyperparameter,
    extract_code,
    hyperparameter_arguments,
    map_container_paths,
    run_processing_job,
    run_training_job,
)
from pipeline.local.store import Store

FIT = textwrap.dedent('''
    """Writes what the container gave it, then one metric line per epoch."""
    import argparse, json, os, pathlib, sys
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--model")
    parser.add_argument("--fail", default="no")
    args = parser.parse_args()
    if args.fail == "yes":
        sys.exit("refusing on purpose")
    env = {k: v for k, v in os.environ.items() if k.startswith("SM_")}
    channel = pathlib.Path(os.environ["SM_CHANNEL_TRAIN"])
    config_dir = os.environ["SM_INPUT_CONFIG_DIR"]
    checkpoints = pathlib.Path(os.environ["SM_CHECKPOINT_DIR"])
    restored = {p.relative_to(checkpoints).as_posix(): p.read_text() for p in checkpoints.rglob("*") if p.is_file()}
    report = {"argv": sys.argv[1:], "env": env, "train_files": sorted(p.name for p in channel.iterdir()),
              "restored_checkpoints": restored,
              "config": sorted(os.listdir(config_dir)),
              "hyperparameters": json.load(open(os.path.join(config_dir, "hyperparameters.json")))}
    pathlib.Path(os.environ["SM_MODEL_DIR"], "report.json").write_text(json.dumps(report))
    pathlib.Path(os.environ["SM_OUTPUT_DATA_DIR"], "history.json").write_text("[]")
    (checkpoints / "checkpoint.txt").write_text("epoch 2 of " + os.environ["TRAINING_JOB_NAME"])
    for epoch in (1, 2):
        print(f"epoch={epoch} validation_accuracy={0.5 + epoch / 10:.2f} train_loss=1e-3", flush=True)
''')

PREP = textwrap.dedent("""
    import argparse, pathlib, sys
    parser = argparse.ArgumentParser()
    parser.add_argument("--input")
    parser.add_argument("--out")
    args = parser.parse_args()
    files = sorted(p.name for p in pathlib.Path(args.input).iterdir())
    if not files:
        sys.exit("no input files")
    pathlib.Path(args.out, "listing.txt").write_text(",".join(files))
    print("processed", len(files))
""")


def _tarball(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture
def context(tmp_path) -> JobContext:
    store = Store(tmp_path / "store")
    store.put_bytes("s3://b/code/sourcedir.tar.gz", _tarball({"fit.py": FIT, "prep.py": PREP}))
    store.put_bytes("s3://b/code/prep.py", PREP.encode())
    store.put_bytes("s3://b/data/train/a.png", b"a")
    store.put_bytes("s3://b/data/train/b.png", b"b")
    lines = []
    return JobContext(store=store, jobs_dir=tmp_path / "jobs", echo=lambda job, line: lines.append((job, line)))


def _training_arguments(**extra_hyperparameters) -> dict:
    return {
        "AlgorithmSpecification": {
            "TrainingInputMode": "File",
            "MetricDefinitions": [
                {"Name": "validation:accuracy", "Regex": r"validation_accuracy=([0-9.]+)"},
                {"Name": "train:loss", "Regex": r"train_loss=([0-9.eE+-]+)"},
            ],
        },
        "HyperParameters": {
            "batch-size": '"64"',
            "lr": "0.01",
            "model": '"resnet18"',
            "sagemaker_program": '"fit.py"',
            "sagemaker_submit_directory": '"s3://b/code/sourcedir.tar.gz"',
            "sagemaker_region": '"us-east-1"',
            **extra_hyperparameters,
        },
        "InputDataConfig": [
            {
                "ChannelName": "train",
                "DataSource": {
                    "S3DataSource": {
                        "S3DataType": "S3Prefix",
                        "S3Uri": "s3://b/data/train",
                        "S3DataDistributionType": "FullyReplicated",
                    }
                },
            }
        ],
        "OutputDataConfig": {"S3OutputPath": "s3://b/models"},
        "CheckpointConfig": {"S3Uri": "s3://b/checkpoints"},
    }


def test_training_job_gets_the_container_contract_and_packs_its_model(context):
    result = run_training_job(_training_arguments(), "train-job-1", context)
    assert result.status == "Completed", result.failure_reason
    model_uri = "s3://b/models/train-job-1/output/model.tar.gz"
    assert result.properties["ModelArtifacts"]["S3ModelArtifacts"] == model_uri
    with tarfile.open(context.store.path(model_uri)) as tar:
        assert tar.getnames() == ["report.json"]  # packed relative to SM_MODEL_DIR, as SageMaker does
        report = json.load(tar.extractfile("report.json"))
    with tarfile.open(context.store.path("s3://b/models/train-job-1/output/output.tar.gz")) as tar:
        assert tar.getnames() == ["history.json"]
    # hyperparameters decoded like the training toolkit; sagemaker_* are not arguments
    assert report["argv"] == ["--batch-size", "64", "--lr", "0.01", "--model", "resnet18"]
    env = report["env"]
    assert (
        env["SM_NUM_GPUS"] == "0" and env["SM_CURRENT_HOST"] == "algo-1" and json.loads(env["SM_HOSTS"]) == ["algo-1"]
    )
    assert json.loads(env["SM_HPS"]) == {"batch-size": "64", "lr": 0.01, "model": "resnet18"}
    assert env["SM_HP_BATCH_SIZE"] == "64"
    assert report["train_files"] == ["a.png", "b.png"]
    assert report["config"] == ["hyperparameters.json", "inputdataconfig.json", "resourceconfig.json"]
    assert report["hyperparameters"]["batch-size"] == '"64"'  # the file keeps SageMaker's JSON-encoded strings
    # nothing to restore for a first job; what it wrote is uploaded under the same key below the checkpoint URI
    assert report["restored_checkpoints"] == {}
    assert context.store.read_bytes("s3://b/checkpoints/checkpoint.txt") == b"epoch 2 of train-job-1"
    # metrics come from the job's own MetricDefinitions
    assert result.metrics == {"validation:accuracy": [0.6, 0.7], "train:loss": [0.001, 0.001]}
    final = {m["MetricName"]: m["Value"] for m in result.properties["FinalMetricDataList"]}
    assert final == {"validation:accuracy": 0.7, "train:loss": 0.001}
    log = (context.jobs_dir / "train-job-1.log").read_text()
    assert "epoch=2 validation_accuracy=0.70" in log
    assert not (context.jobs_dir / "train-job-1").exists()  # completed job folders are removed


def test_a_new_job_with_the_same_checkpoint_uri_gets_every_earlier_checkpoint_restored(context):
    """SageMaker restores all of CheckpointConfig.S3Uri into /opt/ml/checkpoints for each new job, whoever wrote it."""
    context.store.put_bytes("s3://b/checkpoints/other-job/checkpoint.pth", b"other")
    first = run_training_job(_training_arguments(), "train-job-1", context)
    second = run_training_job(_training_arguments(), "train-job-2", context)
    assert first.status == second.status == "Completed"
    with tarfile.open(context.store.path("s3://b/models/train-job-2/output/model.tar.gz")) as tar:
        restored = json.load(tar.extractfile("report.json"))["restored_checkpoints"]
    assert restored == {"checkpoint.txt": "epoch 2 of train-job-1", "other-job/checkpoint.pth": "other"}
    assert context.store.read_bytes("s3://b/checkpoints/checkpoint.txt") == b"epoch 2 of train-job-2"
    assert context.store.read_bytes("s3://b/checkpoints/other-job/checkpoint.pth") == b"other"  # never deleted


def test_failed_training_job_reports_the_last_line(context):
    result = run_training_job(_training_arguments(fail='"yes"'), "train-job-2", context)
    assert result.status == "Failed"
    assert "fit.py exited with code 1" in result.failure_reason and "refusing on purpose" in result.failure_reason
    assert "ModelArtifacts" not in result.properties
    assert (context.jobs_dir / "train-job-2").is_dir()  # kept for inspection


def test_training_job_without_code_is_refused(context):
    arguments = _training_arguments()
    del arguments["HyperParameters"]["sagemaker_program"]
    with pytest.raises(JobError, match="sagemaker_program"):
        run_training_job(arguments, "train-job-3", context)


def _processing_arguments(entrypoint: list[str], code_input: dict, data_uri: str = "s3://b/data/train") -> dict:
    return {
        "AppSpecification": {
            "ImageUri": "img",
            "ContainerEntrypoint": entrypoint,
            "ContainerArguments": ["--input", "/opt/ml/processing/input/data", "--out=/opt/ml/processing/out"],
        },
        "ProcessingInputs": [
            {
                "InputName": "data",
                "S3Input": {
                    "S3Uri": data_uri,
                    "LocalPath": "/opt/ml/processing/input/data",
                    "S3DataType": "S3Prefix",
                    "S3InputMode": "File",
                },
            },
            code_input,
        ],
        "ProcessingOutputConfig": {
            "Outputs": [
                {
                    "OutputName": "out",
                    "S3Output": {
                        "S3Uri": "s3://b/out/listing",
                        "LocalPath": "/opt/ml/processing/out",
                        "S3UploadMode": "EndOfJob",
                    },
                }
            ]
        },
    }


def test_script_processor_job_maps_paths_and_uploads_outputs(context):
    code = {
        "InputName": "code",
        "S3Input": {"S3Uri": "s3://b/code/prep.py", "LocalPath": "/opt/ml/processing/input/code"},
    }
    arguments = _processing_arguments(["python3", "/opt/ml/processing/input/code/prep.py"], code)
    result = run_processing_job(arguments, "prep-1", context)
    assert result.status == "Completed", result.failure_reason
    assert context.store.read_bytes("s3://b/out/listing/listing.txt") == b"a.png,b.png"
    assert result.properties["ProcessingJobName"] == "prep-1"


def test_framework_processor_runproc_and_failure(context):
    runproc = 'cd /opt/ml/processing/input/code/\ntar -xzf sourcedir.tar.gz\nset -e\npython prep.py "$@"\n'
    context.store.put_bytes("s3://b/code/runproc/runproc.sh", runproc.encode())
    arguments = _processing_arguments(
        ["/bin/bash", "/opt/ml/processing/input/entrypoint/runproc.sh"],
        {
            "InputName": "code",
            "S3Input": {"S3Uri": "s3://b/code/sourcedir.tar.gz", "LocalPath": "/opt/ml/processing/input/code/"},
        },
    )
    arguments["ProcessingInputs"].append(
        {
            "InputName": "entrypoint",
            "S3Input": {
                "S3Uri": "s3://b/code/runproc/runproc.sh",
                "LocalPath": "/opt/ml/processing/input/entrypoint",
            },
        }
    )
    assert run_processing_job(arguments, "prep-2", context).status == "Completed"
    assert context.store.read_bytes("s3://b/out/listing/listing.txt") == b"a.png,b.png"
    # the script reads an empty folder and exits 1: the job fails with the script's last line
    arguments["AppSpecification"]["ContainerArguments"] = [
        "--input",
        "/opt/ml/processing/out",
        "--out",
        "/opt/ml/processing/out",
    ]
    failed = run_processing_job(arguments, "prep-4", context)
    assert failed.status == "Failed" and "no input files" in failed.failure_reason


def test_hyperparameter_decoding_and_path_mapping(tmp_path):
    assert decode_hyperparameter('"64"') == "64"
    assert decode_hyperparameter("0.5") == 0.5
    assert decode_hyperparameter("resnet18") == "resnet18"
    assert hyperparameter_arguments({"a": 1, "sagemaker_program": "x", "b": [1, 2]}) == ["--a", "1", "--b", "[1, 2]"]
    mapped = map_container_paths(["--x=/opt/ml/processing/a", "/opt/ml", "/opt/mlx", "/data/opt/ml/y"], tmp_path)
    assert mapped == [f"--x={tmp_path}/opt/ml/processing/a", f"{tmp_path}/opt/ml", "/opt/mlx", "/data/opt/ml/y"]


def test_code_archive_with_path_traversal_is_refused(tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("../escape.py")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    archive = tmp_path / "bad.tar.gz"
    archive.write_bytes(buffer.getvalue())
    with pytest.raises(JobError, match="cannot extract"):
        extract_code(archive, tmp_path / "code")
    assert not (tmp_path / "escape.py").exists()


def test_training_job_without_an_output_path_is_refused_before_it_runs(context):
    arguments = _training_arguments()
    del arguments["OutputDataConfig"]
    with pytest.raises(JobError, match="OutputDataConfig.S3OutputPath is required"):
        run_training_job(arguments, "train-job-5", context)
    assert not (context.jobs_dir / "train-job-5.log").exists()  # the script never started
