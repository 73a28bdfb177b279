"""The AWS defaults fine-tune ImageNet-pretrained ResNet50 (the seeds' recipe); local mode trains from scratch.

The weights come from torchvision's download in the training container, or as a ``.pth`` through the ``weights``
channel when the job has no internet. Nothing here downloads: the weights channel test saves a randomly
initialised resnet50 state_dict and trains one step from it.
"""

from __future__ import annotations

import json

import pytest

from pipeline.build import definition_json
from pipeline.config import ConfigError, load_config
from tests.conftest import run_script


def steps_by_name(definition: dict) -> dict:
    return {step["Name"]: step for step in definition["Steps"]}


def test_aws_default_fine_tunes_pretrained_resnet50_with_its_eval_preset():
    from imgclf import models, presets

    config = load_config()
    assert (config.training.model, config.training.weights, config.training.image_size) == (
        "resnet50", "IMAGENET1K_V2", 224)  # fmt: skip
    assert config.training.hyperparameters["augment"] == "standard"
    # fine-tuning ranges: learning rates well below from-scratch ones, batches a 16 GB T4 holds for ResNet50
    assert config.tuning.ranges["lr"].max <= 0.02 and config.tuning.ranges["batch-size"].values == [32, 64]
    steps = steps_by_name(json.loads(definition_json(config)))
    # the SDK's framework estimators JSON-encode hyperparameter values; train.py accepts that
    hyperparameters = steps["train"]["Arguments"]["HyperParameters"]
    assert [json.loads(hyperparameters[k]) for k in ("model", "weights", "augment")] == [
        "resnet50", "IMAGENET1K_V2", "standard"]  # fmt: skip
    static = steps["tune"]["Arguments"]["TrainingJobDefinition"]["StaticHyperParameters"]
    assert json.loads(static["model"]) == "resnet50" and json.loads(static["weights"]) == "IMAGENET1K_V2"
    # the eval preset train.py records for these weights is torchvision's own: resize 232, centre crop 224
    sizes = presets.eval_sizes(224, models.weights_transforms_metadata("resnet50", "IMAGENET1K_V2"))
    assert (sizes["resize_size"], sizes["crop_size"]) == (232, 224)


def test_local_mode_trains_from_scratch_on_the_digits():
    config = load_config(local=True)
    assert (config.training.model, config.training.weights) == ("resnet18", "none")
    # the size stays training.image_size: the digits' 28 px is make run's --set (a user's photos train at 224)
    assert config.training.image_size == load_config().training.image_size
    assert config.training.hyperparameters["augment"] == "light"  # digits are not flipped


def test_weights_channel_reaches_train_and_tune():
    config = load_config(overrides=["training.weights_uri=s3://my-bucket/weights/resnet50.pth",
                                    "training.weights=resnet50.pth"])  # fmt: skip
    steps = steps_by_name(json.loads(definition_json(config)))
    train = {c["ChannelName"]: c for c in steps["train"]["Arguments"]["InputDataConfig"]}
    assert train["weights"]["DataSource"]["S3DataSource"]["S3Uri"] == "s3://my-bucket/weights/resnet50.pth"
    assert json.loads(steps["train"]["Arguments"]["HyperParameters"]["weights"]) == "resnet50.pth"
    tune = steps["tune"]["Arguments"]["TrainingJobDefinition"]["InputDataConfig"]
    assert {c["ChannelName"] for c in tune} == {"train", "validation", "weights"}
    default = steps_by_name(json.loads(definition_json(load_config())))
    assert {c["ChannelName"] for c in default["train"]["Arguments"]["InputDataConfig"]} == {"train", "validation"}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["security.enable_network_isolation=true"], "gives the job no internet"),
        (["training.weights_uri=s3://b/w.pth"], "weights must be the .pth file name"),
        (["training.weights_uri=b/w.pth", "training.weights=w.pth"], "is not an S3 URI"),
    ],
)
def test_weights_that_cannot_arrive_are_refused_before_anything_runs(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=overrides)


def test_network_isolation_with_the_weights_channel_is_accepted():
    config = load_config(overrides=["security.enable_network_isolation=true", "training.weights=resnet50.pth",
                                    "training.weights_uri=s3://b/weights/resnet50.pth"])  # fmt: skip
    assert config.training.weights == "resnet50.pth"


def test_train_py_starts_from_a_pth_in_the_weights_channel(digits_split, tmp_path):
    """A randomly initialised resnet50 state_dict (1000-class head, as torchvision saves it) in the channel."""
    import torch
    from torchvision.models import resnet50

    torch.manual_seed(123)
    saved = resnet50(weights=None).state_dict()
    channel = tmp_path / "weights"
    channel.mkdir()
    torch.save(saved, channel / "resnet50.pth")
    job = tmp_path / "job"
    run_script("train.py", "--train-dir", str(digits_split / "train"), "--validation-dir",
               str(digits_split / "validation"), "--model-dir", str(job / "model"), "--output-data-dir",
               str(job / "output"), "--checkpoint-dir", str(job / "checkpoints"), "--model", "resnet50",
               "--weights", "resnet50.pth", "--image-size", "32", "--epochs", "1", "--batch-size", "16",
               "--lr", "0.000001", "--max-steps-per-epoch", "1", "--debugger", "false", "--augment", "none",
               env={"SM_CHANNEL_WEIGHTS": str(channel)})  # fmt: skip
    trained = torch.load(job / "model" / "model.pth", weights_only=True)
    # the body started from the channel's weights (one step at lr 1e-6 moves them by ~1e-6), the head is new
    for name in ("conv1.weight", "layer4.2.conv3.weight"):
        assert torch.allclose(trained[name], saved[name], atol=1e-4), name
    torch.manual_seed(0)
    fresh = resnet50(weights=None).state_dict()
    assert not torch.allclose(fresh["conv1.weight"], saved["conv1.weight"], atol=1e-2)
    assert trained["fc.weight"].shape == (10, 2048) and saved["fc.weight"].shape == (1000, 2048)
    assert json.loads((job / "model" / "model_config.json").read_text())["weights"] == "resnet50.pth"
    history = json.loads((job / "output" / "history.json").read_text())
    assert history["debugger"] == {"hook": False, "reason": "--debugger false"}
