"""Fixtures of the reliability tests: a small real model archive (untrained, so it builds in a second)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

UNIT_TESTS = Path(__file__).resolve().parents[1] / "unit"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A 16 px resnet18 (untrained, seeded) in the model archive layout of docs/contracts.md.

    Returns the folder holding ``model/`` (extracted: model.pth, classes.json, model_config.json, code/) and
    ``model.tar.gz``. Serving and fuzz tests need a model that loads and answers, not one that is right.
    """
    import torch

    if str(UNIT_TESTS) not in sys.path:
        sys.path.insert(0, str(UNIT_TESTS))
    from test_serving_model import CLASSES, IMAGE_SIZE, write_model_dir

    from imgclf.models import build_model
    from imgclf.presets import eval_sizes

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-model")
    config = {"model": "resnet18", "num_classes": len(CLASSES), "image_size": IMAGE_SIZE, "channels": 3,
              "weights": "none", **eval_sizes(IMAGE_SIZE, None)}
    write_model_dir(folder / "model", build_model("resnet18", len(CLASSES)).eval(), config, CLASSES)
    return folder
