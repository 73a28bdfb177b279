"""Transform presets, chosen by name as in torchvision's references/classification/presets.py.

Every preset takes a ``uint8`` tensor image of shape ``(3, H, W)`` (decoded by :mod:`imgclf.data`) and returns a
``float32`` tensor ``(3, crop, crop)`` normalised with the weights' mean and std. Evaluation and inference use the
same :class:`ClassificationPresetEval`, sized from the model config saved with the model, so serving sees exactly
what evaluation saw.
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2

#: ImageNet statistics, torchvision's default for every classification model (also used without weights).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: torchvision's usual resize/crop ratio for ImageNet weights (e.g. resize 256, crop 224).
DEFAULT_CROP_RATIO = 224 / 256
AUGMENTATIONS = ("none", "light", "standard")


class ClassificationPresetTrain:
    """Training transforms.

    Args:
        crop_size: side of the square output, in pixels.
        mean, std: per-channel normalisation.
        augment: ``none`` (resize and centre crop, as evaluation), ``light`` (RandomResizedCrop with scale
            0.6-1.0, no flip: keeps digits and text readable), ``standard`` (torchvision reference: RandomResizedCrop
            scale 0.08-1.0 and horizontal flip 0.5, for natural photos).
        resize_size: resize of the shorter side for ``none`` (default: ``crop_size``).
    """

    def __init__(self, crop_size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD, augment: str = "light",
                 resize_size: int | None = None):
        if augment not in AUGMENTATIONS:
            raise ValueError(f"unknown augment {augment!r}: choose one of {', '.join(AUGMENTATIONS)}")
        if augment == "none":
            geometry = [v2.Resize(resize_size or crop_size, antialias=True), v2.CenterCrop(crop_size)]
        elif augment == "light":
            geometry = [v2.RandomResizedCrop(crop_size, scale=(0.6, 1.0), ratio=(0.85, 1.18), antialias=True)]
        else:
            geometry = [v2.RandomResizedCrop(crop_size, antialias=True), v2.RandomHorizontalFlip(0.5)]
        self.transforms = v2.Compose([*geometry, v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return self.transforms(image)


class ClassificationPresetEval:
    """Evaluation and inference transforms: resize the shorter side to ``resize_size``, centre-crop ``crop_size``."""

    def __init__(self, crop_size: int, resize_size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.transforms = v2.Compose([
            v2.Resize(resize_size, antialias=True),
            v2.CenterCrop(crop_size),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean, std),
        ])

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return self.transforms(image)


def eval_sizes(image_size: int, weights_metadata: dict | None) -> dict:
    """Return ``{"crop_size", "resize_size", "mean", "std"}`` for a model trained at ``image_size`` pixels.

    With torchvision's named weights the resize/crop ratio and statistics come from the weights' own metadata
    (e.g. ResNet50 IMAGENET1K_V2: resize 232, crop 224); without weights the image is resized straight to
    ``image_size`` (small images such as digits lose nothing to a crop).
    """
    if weights_metadata:
        ratio = weights_metadata["crop_size"] / weights_metadata["resize_size"]
        return {"crop_size": image_size, "resize_size": round(image_size / ratio),
                "mean": list(weights_metadata["mean"]), "std": list(weights_metadata["std"])}
    return {"crop_size": image_size, "resize_size": image_size, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}


def eval_preset_from_config(model_config: dict) -> ClassificationPresetEval:
    """Build the evaluation preset from a saved ``model_config.json`` (see docs/contracts.md)."""
    return ClassificationPresetEval(
        crop_size=int(model_config["crop_size"]),
        resize_size=int(model_config["resize_size"]),
        mean=model_config.get("mean", IMAGENET_MEAN),
        std=model_config.get("std", IMAGENET_STD),
    )
