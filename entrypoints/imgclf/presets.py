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
    """Training transforms, in two parts: :attr:`deterministic_part` (the same output for the same image every
    epoch, so a dataset may cache it) then :attr:`random_part` (drawn anew each time; None without augmentation).

    Args:
        crop_size: side of the square output, in pixels.
        mean, std: per-channel normalisation.
        augment: ``none`` (resize and centre crop, as evaluation), ``light`` (resize and centre crop, then a
            random shift of up to 1/14 of the side, zero-filled: torchvision's ``RandomCrop`` with padding, the
            classic augmentation of MNIST and CIFAR; no flip, so digits and text stay readable), ``standard``
            (torchvision reference: RandomResizedCrop scale 0.08-1.0 and horizontal flip 0.5, for natural photos).
        resize_size: resize of the shorter side for ``none`` and ``light`` (default: ``crop_size``).
    """

    def __init__(self, crop_size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD, augment: str = "light",
                 resize_size: int | None = None):
        if augment not in AUGMENTATIONS:
            raise ValueError(f"unknown augment {augment!r}: choose one of {', '.join(AUGMENTATIONS)}")
        to_float = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
        fit = [v2.Resize(resize_size or crop_size, antialias=True), v2.CenterCrop(crop_size)]
        if augment == "none":
            self.deterministic_part, self.random_part = v2.Compose([*fit, *to_float]), None
        elif augment == "light":
            shift = v2.RandomCrop(crop_size, padding=max(1, crop_size // 14))
            self.deterministic_part, self.random_part = v2.Compose(fit), v2.Compose([shift, *to_float])
        else:
            self.deterministic_part = v2.Identity()
            self.random_part = v2.Compose([v2.RandomResizedCrop(crop_size, antialias=True),
                                           v2.RandomHorizontalFlip(0.5), *to_float])

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        image = self.deterministic_part(image)
        return image if self.random_part is None else self.random_part(image)


class ClassificationPresetEval:
    """Evaluation and inference transforms: resize the shorter side to ``resize_size``, centre-crop ``crop_size``.
    All of it is :attr:`deterministic_part` (``random_part`` is None), as in :class:`ClassificationPresetTrain`."""

    random_part = None

    def __init__(self, crop_size: int, resize_size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.deterministic_part = v2.Compose([
            v2.Resize(resize_size, antialias=True),
            v2.CenterCrop(crop_size),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean, std),
        ])

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return self.deterministic_part(image)


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
