"""Model factory over torchvision's classification models, with a new head for the data set's class count.

Weights (``--weights``):
- ``none``: random initialisation (the default; works offline everywhere).
- a path to a ``.pth`` state_dict (e.g. a file in the ``weights`` channel of a network-isolated job); the
  classification head is replaced afterwards, so a state_dict trained on another class count loads too.
- a torchvision weights name such as ``DEFAULT`` or ``IMAGENET1K_V1``: downloaded by torchvision, which needs
  internet access; without it the error says to pass a file through the ``weights`` channel instead.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
from torch import nn
from torchvision import models as tv_models

#: Model name -> torchvision builder. The head of each is replaced by :func:`replace_head`.
MODEL_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "resnet18": tv_models.resnet18,
    "resnet34": tv_models.resnet34,
    "resnet50": tv_models.resnet50,
    **{f"efficientnet_b{i}": getattr(tv_models, f"efficientnet_b{i}") for i in range(8)},
    "mobilenet_v3_small": tv_models.mobilenet_v3_small,
    "mobilenet_v3_large": tv_models.mobilenet_v3_large,
}
MODEL_NAMES = tuple(MODEL_BUILDERS)


class WeightsError(ValueError):
    """The requested pretrained weights cannot be loaded (unknown name, missing file, no internet)."""


def replace_head(model: nn.Module, num_classes: int) -> nn.Module:
    """Replace the final classification layer of a torchvision model with one of ``num_classes`` outputs."""
    if isinstance(getattr(model, "fc", None), nn.Linear):  # ResNets
        model.fc = nn.Linear(model.fc.in_features, num_classes)
        return model
    classifier = getattr(model, "classifier", None)
    if isinstance(classifier, nn.Sequential) and isinstance(classifier[-1], nn.Linear):  # EfficientNet, MobileNetV3
        classifier[-1] = nn.Linear(classifier[-1].in_features, num_classes)
        return model
    raise TypeError(f"do not know where the classification head of {type(model).__name__} is")


def _torchvision_weights(name: str, weights: str):
    """Resolve ``weights`` (``DEFAULT``, ``IMAGENET1K_V1``, ...) to torchvision's enum for model ``name``."""
    try:
        return tv_models.get_model_weights(name)[weights.upper()]
    except KeyError as error:
        valid = ", ".join(w.name for w in tv_models.get_model_weights(name))
        raise WeightsError(
            f"unknown weights {weights!r} for {name}: use 'none', a path to a .pth state_dict, or one of {valid}"
        ) from error


def build_model(name: str, num_classes: int, weights: str = "none") -> nn.Module:
    """Build torchvision model ``name`` with a ``num_classes``-way head.

    Args:
        name: one of :data:`MODEL_NAMES`.
        num_classes: number of output classes (>= 2).
        weights: ``none``, a state_dict file path, or a torchvision weights name (see the module docstring).

    Returns:
        The model, in training mode, on the CPU.

    Raises:
        ValueError: unknown model name or fewer than 2 classes.
        WeightsError: weights that cannot be loaded, with the fix in the message.
    """
    if name not in MODEL_BUILDERS:
        raise ValueError(f"unknown model {name!r}: choose one of {', '.join(MODEL_NAMES)}")
    if num_classes < 2:
        raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}")
    weights = (weights or "none").strip()
    if weights.lower() in ("none", "", "null", "random"):
        return replace_head(MODEL_BUILDERS[name](weights=None), num_classes)
    if os.path.sep in weights or weights.endswith((".pth", ".pt")):
        if not os.path.isfile(weights):
            raise WeightsError(f"weights file {weights} does not exist: check the 'weights' channel or path")
        model = MODEL_BUILDERS[name](weights=None)
        state = torch.load(weights, map_location="cpu", weights_only=True)
        head_keys = {k for k in state if k.startswith(("fc.", "classifier."))}
        body = {k: v for k, v in state.items() if k not in head_keys}
        missing, unexpected = model.load_state_dict(body, strict=False)
        missing = [k for k in missing if not k.startswith(("fc.", "classifier."))]
        if missing or unexpected:
            raise WeightsError(
                f"weights file {weights} does not fit {name}: {len(missing)} missing and {len(unexpected)} "
                f"unexpected keys (e.g. {(missing or unexpected)[:3]}): pass weights saved from a {name}"
            )
        return replace_head(model, num_classes)
    enum = _torchvision_weights(name, weights)
    try:
        model = MODEL_BUILDERS[name](weights=enum)
    except (OSError, RuntimeError) as error:  # URLError is an OSError
        raise WeightsError(
            f"could not download torchvision weights {enum} ({error}); this job has no internet access: "
            "save the weights to a .pth file and pass it through the 'weights' channel (or use --weights none)"
        ) from error
    return replace_head(model, num_classes)


def weights_transforms_metadata(name: str, weights: str) -> dict | None:
    """Return ``{"resize_size", "crop_size", "mean", "std"}`` of torchvision's named weights, else None.

    The evaluation preset must match the weights' own metadata (e.g. ResNet50 IMAGENET1K_V2: resize 232, crop 224).
    """
    weights = (weights or "none").strip()
    if weights.lower() in ("none", "", "null", "random") or os.path.sep in weights or weights.endswith((".pth", ".pt")):
        return None
    transforms = _torchvision_weights(name, weights).transforms()
    return {
        "resize_size": int(transforms.resize_size[0]),
        "crop_size": int(transforms.crop_size[0]),
        "mean": list(transforms.mean),
        "std": list(transforms.std),
    }
