"""Model factory: torchvision's classification models and LeNet, with a new head for the data set's class count.

Weights (``--weights``):
- ``none``: random initialisation (the default; works offline everywhere).
- a path to a ``.pth`` state_dict (e.g. a file in the ``weights`` channel of a network-isolated job); the
  classification head is replaced afterwards, so a state_dict trained on another class count loads too.
- a torchvision weights name such as ``DEFAULT`` or ``IMAGENET1K_V1``: downloaded by torchvision, which needs
  internet access; without it the error says to pass a file through the ``weights`` channel instead.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn
from torchvision import models as tv_models


def _lenet_layer(channels_in: int, channels_out: int, padding: int) -> nn.Sequential:
    # BatchNorm removes a convolution's bias (its gradient is zero), so the convolution has none
    return nn.Sequential(OrderedDict(
        conv=nn.Conv2d(channels_in, channels_out, kernel_size=5, padding=padding, bias=False),
        bn=nn.BatchNorm2d(channels_out), relu=nn.ReLU(inplace=True), pool=nn.MaxPool2d(2)))


class LeNet(nn.Module):
    """LeNet-5's topology (LeCun et al. 1998, "Gradient-based learning applied to document recognition") as it is
    written today, with ReLU, max pooling and batch normalisation, and 16 and 32 filters where LeNet-5 had 6 and 16
    (docs/local-mode.md gives the measurements): the network for small images such as the bundled 28-px digits,
    where a ResNet costs several times more per image for about the same accuracy.

    ``layer1`` (16 filters 5x5, padding 2) and ``layer2`` (32 filters 5x5), each convolution, BatchNorm, ReLU and
    2x2 max pooling; the features are pooled to 5x5 (so any input size works), then ``fc1`` (120 units), ``fc2``
    (84 units) and the head ``fc``. Every ReLU module is named ``relu``, as in torchvision's ResNets, so that the
    Debugger hook's ``relu_input`` collection (regex ``.*relu_input``) finds them.

    Input ``(N, 3, H, W)`` float, output ``(N, num_classes)`` logits. torchvision has no weights for it.

    Raises:
        WeightsError: ``weights`` is not None.
    """

    def __init__(self, *, weights=None, num_classes: int = 1000):
        super().__init__()
        if weights is not None:
            raise WeightsError("lenet has no pretrained weights: use 'none' or a path to a .pth state_dict")
        self.layer1 = _lenet_layer(3, 16, padding=2)
        self.layer2 = _lenet_layer(16, 32, padding=0)
        self.avgpool = nn.AdaptiveAvgPool2d(5)
        self.fc1 = nn.Sequential(OrderedDict(linear=nn.Linear(32 * 5 * 5, 120), relu=nn.ReLU(inplace=True)))
        self.fc2 = nn.Sequential(OrderedDict(linear=nn.Linear(120, 84), relu=nn.ReLU(inplace=True)))
        self.fc = nn.Linear(84, num_classes)
        # He initialisation (as torchvision's ResNets do for their convolutions): PyTorch's default for Linear
        # shrinks the variance about threefold per layer, which left the ReLU inputs of fc2 close to
        # PoorWeightInitialization's threshold (a variance ratio of 10 across layers) on a healthy run
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.Linear) and module is not self.fc:
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.layer2(self.layer1(x)))
        return self.fc(self.fc2(self.fc1(torch.flatten(x, 1))))


#: Model name -> builder (torchvision's, and LeNet). The head of each is replaced by :func:`replace_head`.
MODEL_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "lenet": LeNet,
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
    if MODEL_BUILDERS[name] is LeNet:
        raise WeightsError(f"{name} has no torchvision weights {weights!r}: use 'none' or a path to a .pth state_dict")
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
