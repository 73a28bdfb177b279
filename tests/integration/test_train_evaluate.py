"""train.py and evaluate.py under the container contract, on real digits at 16 px."""

from __future__ import annotations

import json
import tarfile

import torch

from tests.conftest import run_script


def metric_lines(stdout: str) -> list[dict]:
    lines = [line for line in stdout.splitlines() if line.startswith("epoch=")]
    return [dict(pair.split("=", 1) for pair in line.split()) for line in lines]


def test_training_learns_and_writes_the_model_artifacts(trained_model):
    history = json.loads((trained_model / "output" / "history.json").read_text())
    assert [record["epoch"] for record in history["epochs"]] == [1, 2, 3, 4]
    assert history["epochs"][-1]["validation_accuracy"] >= 0.6  # chance is 0.1
    assert history["epochs"][-1]["train_loss"] < history["epochs"][0]["train_loss"]
    model_dir = trained_model / "model"
    assert json.loads((model_dir / "classes.json").read_text())[0] == "0_zero"
    config = json.loads((model_dir / "model_config.json").read_text())
    assert config["model"] == "resnet18" and config["num_classes"] == 10 and config["crop_size"] == 28
    state = torch.load(model_dir / "model.pth", weights_only=True)
    assert state["fc.weight"].shape == (10, 512)
    assert (model_dir / "code" / "imgclf" / "presets.py").is_file()
    assert (trained_model / "checkpoints" / "checkpoint.pth").is_file()


def test_metric_lines_follow_the_tuner_contract(digits_split, tmp_path):
    from imgclf.metrics import METRIC_DEFINITIONS, parse_metric_lines

    # JSON-quoted values, as SageMaker sends categorical hyperparameters, and underscore spellings.
    result = run_script("train.py", "--train-dir", str(digits_split / "train"),
                        "--validation-dir", str(digits_split / "validation"), "--model-dir", str(tmp_path / "m"),
                        "--output-data-dir", str(tmp_path / "o"), "--checkpoint_dir", str(tmp_path / "c"),
                        "--image-size", '"16"', "--epochs", "1", "--batch_size", '"64"', "--lr", "0.05",
                        "--max-steps-per-epoch", "3", "--debugger", '"false"',
                        env={"IMGCLF_PROGRESS_INTERVAL_S": "0"})  # a progress line after every batch
    progress = [line.split(",")[0] for line in result.stdout.splitlines() if line.startswith("epoch 1: batch")]
    assert progress == ["epoch 1: batch 1/3", "epoch 1: batch 2/3", "epoch 1: batch 3/3"]
    # progress lines match none of the tuner's regexes: one value per metric for the one epoch
    parsed = parse_metric_lines(result.stdout, METRIC_DEFINITIONS)
    assert len(parsed["validation:accuracy"]) == 1 and len(parsed["train:loss"]) == 1
    assert 0.0 <= parsed["validation:accuracy"][0] <= 1.0
    assert parsed["train:loss"][0] > 0


def test_resume_from_checkpoint_finishes_the_remaining_epochs(digits_split, tmp_path):
    common = ["--train-dir", str(digits_split / "train"), "--validation-dir", str(digits_split / "validation"),
              "--model-dir", str(tmp_path / "model"), "--output-data-dir", str(tmp_path / "out"),
              "--checkpoint-dir", str(tmp_path / "ckpt"), "--image-size", "16", "--batch-size", "64",
              "--max-steps-per-epoch", "2", "--debugger", "false"]
    first = run_script("train.py", *common, "--epochs", "1")
    assert [line["epoch"] for line in metric_lines(first.stdout)] == ["1"]
    second = run_script("train.py", *common, "--epochs", "3")
    assert "resumed from checkpoint after epoch 1" in second.stdout
    assert [line["epoch"] for line in metric_lines(second.stdout)] == ["2", "3"]
    history = json.loads((tmp_path / "out" / "history.json").read_text())
    assert [record["epoch"] for record in history["epochs"]] == [1, 2, 3]


def test_bad_hyperparameters_fail_clearly(digits_split, tmp_path):
    result = run_script("train.py", "--train-dir", str(digits_split / "train"), "--model", "resnet999",
                        check=False)
    assert result.returncode == 2 and "unknown --model 'resnet999'" in result.stderr
    result = run_script("train.py", "--train-dir", str(digits_split / "train"),
                        "--validation-dir", str(digits_split / "validation"), "--model-dir", str(tmp_path / "m"),
                        "--output-data-dir", str(tmp_path / "o"), "--checkpoint-dir", str(tmp_path / "c"),
                        "--image-size", "16", "--weights", "IMAGENET1K_V1", check=False)
    assert result.returncode == 2 and "weights" in result.stderr and "channel" in result.stderr


def test_evaluate_writes_the_model_registry_metrics(trained_model, digits_split, tmp_path):
    archive_dir = tmp_path / "model"
    archive_dir.mkdir()
    with tarfile.open(archive_dir / "model.tar.gz", "w:gz") as archive:
        for path in sorted((trained_model / "model").iterdir()):
            archive.add(path, arcname=path.name)
    run_script("evaluate.py", "--model-dir", str(archive_dir), "--test-dir", str(digits_split / "test"),
               "--output-dir", str(tmp_path / "evaluation"))
    report = json.loads((tmp_path / "evaluation" / "evaluation.json").read_text())
    metrics = report["multiclass_classification_metrics"]
    assert set(metrics) >= {"accuracy", "top_5_accuracy", "macro_precision", "macro_recall", "macro_f1"}
    accuracy = metrics["accuracy"]["value"]
    assert 0.5 <= accuracy <= 1.0
    assert 0 < metrics["accuracy"]["standard_deviation"] < 0.1
    assert metrics["top_5_accuracy"]["value"] >= accuracy
    matrix = report["confusion_matrix"]["matrix"]
    assert sum(map(sum, matrix)) == report["test_images"] == 90
    assert sum(matrix[i][i] for i in range(10)) / 90 == accuracy
    assert report["per_class"]["0_zero"]["support"] == 9


def test_evaluate_refuses_a_path_traversal_archive(tmp_path, digits_split):
    import io

    archive_dir = tmp_path / "model"
    archive_dir.mkdir()
    with tarfile.open(archive_dir / "model.tar.gz", "w:gz") as archive:
        payload = b"owned"
        info = tarfile.TarInfo("../../escaped.txt")
        info.size = len(payload)
        archive.addfile(info, io.BytesIO(payload))
    result = run_script("evaluate.py", "--model-dir", str(archive_dir), "--test-dir", str(digits_split / "test"),
                        "--output-dir", str(tmp_path / "evaluation"), check=False)
    assert result.returncode == 2
    assert "outside" in result.stderr or "escaped" in result.stderr
    assert not (tmp_path / "escaped.txt").exists()
