"""LeNet (imgclf/models.py), the bundled digits' network, and the decoded-image cache of ImageFolderDataset."""

from __future__ import annotations

import re
import shutil

import pytest
import torch

from imgclf import data, models, presets
from imgclf.debugger.hook import RELU_INPUT_REGEX


def test_lenet_takes_any_image_size_and_has_no_dead_biases_or_hidden_relus():
    model = models.build_model("lenet", 10)
    for size in (28, 64):
        assert model(torch.randn(2, 3, size, size)).shape == (2, 10)
    # a convolution followed by BatchNorm has no bias: its gradient would be zero (VanishingGradient fired on it)
    assert all(m.bias is None for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    # the Debugger hook's relu_input collection finds every ReLU (PoorWeightInitialization reads them)
    relus = [name for name, m in model.named_modules() if isinstance(m, torch.nn.ReLU)]
    assert len(relus) == 4 and all(re.fullmatch(RELU_INPUT_REGEX, f"LeNet_{name}_input") for name in relus)


def test_lenet_refuses_torchvision_weights_names_and_loads_its_own_state_dict(tmp_path):
    with pytest.raises(models.WeightsError, match="lenet has no torchvision weights"):
        models.build_model("lenet", 10, "DEFAULT")
    trained = models.build_model("lenet", 7)
    torch.save(trained.state_dict(), tmp_path / "lenet.pth")
    loaded = models.build_model("lenet", 10, str(tmp_path / "lenet.pth"))
    assert torch.equal(loaded.layer1.conv.weight, trained.layer1.conv.weight) and loaded.fc.out_features == 10


def test_cached_epochs_read_no_file_and_return_what_the_first_epoch_did(digits_split, tmp_path):
    tree = tmp_path / "train"
    shutil.copytree(digits_split / "train", tree)
    classes = data.list_classes(tree)
    preset = presets.ClassificationPresetEval(28, 28)
    dataset = data.ImageFolderDataset(tree, classes, preset, cache_bytes=1 << 30)
    first = [dataset[i] for i in range(len(dataset))]
    shutil.rmtree(tree)  # later epochs must not touch the disk
    again = [dataset[i] for i in range(len(dataset))]
    assert all(torch.equal(a[0], b[0]) and a[1] == b[1] for a, b in zip(first, again, strict=True))


def test_the_cache_keeps_to_its_budget_and_keeps_augmentation_random(digits_split):
    tree = digits_split / "train"
    classes = data.list_classes(tree)
    one_image = 3 * 28 * 28  # uint8 bytes of a resized, centre-cropped digit
    augmenting = presets.ClassificationPresetTrain(28, augment="light")
    dataset = data.ImageFolderDataset(tree, classes, augmenting, cache_bytes=5 * one_image)
    for index in range(len(dataset)):
        dataset[index]
    # the resized images (not their random shifts) are kept, and no more than the budget holds
    assert len(dataset._cache) == 5 and all(t.dtype == torch.uint8 for t in dataset._cache.values())
    torch.manual_seed(0)
    shifted = {tuple(dataset[0][0].flatten().tolist()) for _ in range(8)}
    assert len(shifted) > 1  # each epoch still draws its own shift
    # the split of a preset changes nothing: deterministic part then random part is the whole transform
    image = data.read_image_tensor(dataset.samples[0][0])
    torch.manual_seed(1)
    whole = augmenting(image)
    torch.manual_seed(1)
    assert torch.equal(augmenting.random_part(augmenting.deterministic_part(image)), whole)
    assert presets.ClassificationPresetTrain(28, augment="none").random_part is None
