"""SageMaker PyTorch serving handlers: ``model_fn``, ``input_fn``, ``predict_fn``, ``output_fn``.

Copied with ``imgclf/`` into the model archive's ``code/`` folder, so ``model.tar.gz`` serves itself in the AWS
PyTorch inference container (sagemaker-pytorch-inference-toolkit, which imports this file as the user module) and
in ``python -m pipeline serve``, which loads it the same way. Each handler may take the toolkit's request
``context`` as its last argument; both servers pass it when the signature asks for it.

Flow per request: ``input_fn`` decodes every image in the body and applies the model's eval preset (the same as
evaluation's) -> :class:`imgclf.serving.ImageBatch`; ``predict_fn`` runs one forward pass under
``torch.inference_mode`` -> softmax probabilities; ``output_fn`` -> JSON top-k labels per image. Bad input raises
:class:`imgclf.serving.RequestError` with its HTTP status (400, 406, 413, 415); see docs/serving.md.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from imgclf import precision, serving
from imgclf.data import pil_to_tensor
from imgclf.models import build_model
from imgclf.presets import eval_preset_from_config

logger = logging.getLogger(__name__)

# input_fn receives no model in SageMaker's contract, yet preprocessing belongs there (it runs per request, in
# parallel, before requests are batched): model_fn records the eval preset of the model it loaded.
_PRESET = None


def _device(context) -> torch.device:
    if not torch.cuda.is_available():
        return torch.device("cpu")
    gpu_id = getattr(context, "system_properties", {}).get("gpu_id") if context is not None else None
    return torch.device(f"cuda:{gpu_id}" if gpu_id is not None else "cuda")


def model_fn(model_dir, context=None) -> serving.ServedModel:
    """Load the model artifacts in ``model_dir`` (model.pth, classes.json, model_config.json; docs/contracts.md).

    The state_dict is read with ``weights_only=True`` (no pickled code runs). The memory format (channels_last or
    not) and the autocast dtype (fp32 unless reduced precision measured faster, see imgclf.precision) are measured
    on a warm-up batch. The model package version comes from ``IMGCLF_MODEL_PACKAGE_VERSION``.

    Raises:
        FileNotFoundError: a missing artifact file. ValueError: a config/classes mismatch, or an unknown
            ``IMGCLF_AUTOCAST`` value.
    """
    global _PRESET
    folder = Path(model_dir)
    for name in ("model.pth", "classes.json", "model_config.json"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name} is missing: the model archive must hold model.pth, "
                                    "classes.json and model_config.json (docs/contracts.md)")
    config = json.loads((folder / "model_config.json").read_text(encoding="utf-8"))
    classes = [str(name) for name in json.loads((folder / "classes.json").read_text(encoding="utf-8"))]
    if int(config.get("num_classes", len(classes))) != len(classes):
        raise ValueError(f"model_config.json says {config['num_classes']} classes but classes.json lists "
                         f"{len(classes)}")
    device = _device(context)
    module = build_model(config["model"], len(classes))
    module.load_state_dict(torch.load(folder / "model.pth", map_location="cpu", weights_only=True))
    module = module.eval().to(device)
    preset = eval_preset_from_config(config)
    crop = int(config["crop_size"])
    example = torch.zeros(min(8, serving.MAX_IMAGES_PER_REQUEST), 3, crop, crop, device=device)
    memory_format = serving.pick_memory_format(module, example)
    autocast_dtype = precision.pick_serving_autocast(module, example.contiguous(memory_format=memory_format))
    logger.info("loaded %s (%d classes, %dpx) on %s, memory format %s, autocast %s", config["model"],
                len(classes), crop, device, "channels_last" if memory_format == torch.channels_last else "contiguous",
                precision.autocast_name(autocast_dtype))
    _PRESET = preset
    return serving.ServedModel(module=module, classes=classes, config=config, preset=preset, device=device,
                               memory_format=memory_format, model_version=serving.model_version_from_env(),
                               autocast_dtype=autocast_dtype)


def _request_headers(context) -> dict:
    """Request headers from the toolkit's context (TorchServe: ``context.request_processor[0]``), or {}."""
    try:
        return dict(context.request_processor[0].get_request_properties() or {})
    except (AttributeError, IndexError, TypeError):
        return {}


def input_fn(request_body, request_content_type, context=None) -> serving.ImageBatch:
    """Decode a request body into a preprocessed batch: ``float32 (N, 3, crop, crop)`` plus each image's top_k.

    Args:
        request_body: ``bytes`` (``str`` for ``application/json``: the toolkit decodes UTF-8 types).
        request_content_type: see :data:`imgclf.serving.SUPPORTED_CONTENT_TYPES`.
        context: the toolkit's request context; its headers give top_k (``X-Top-K`` or CustomAttributes ``top_k=``).

    Raises:
        RequestError: 400, 413 or 415 (see :func:`imgclf.serving.decode_request`); 503 before ``model_fn`` ran.
    """
    top_k = serving.top_k_from_headers(_request_headers(context))
    if _PRESET is None:
        raise serving.RequestError(503, "the model is not loaded yet: retry once /ping answers 200")
    images = serving.decode_request(request_body, request_content_type)
    batch = torch.stack([_PRESET(pil_to_tensor(image)) for image in images])
    return serving.ImageBatch(batch, [top_k] * len(images))


def predict_fn(input_data: serving.ImageBatch, model: serving.ServedModel) -> serving.Predictions:
    """One forward pass over the whole batch -> softmax probabilities ``float32 (N, num_classes)`` on the CPU.

    Runs under ``torch.autocast`` with ``model.autocast_dtype`` when ``model_fn`` chose reduced precision (it was
    measured faster at load; ``IMGCLF_AUTOCAST=off`` forces fp32); the softmax is always computed in fp32.
    """
    images = input_data.images.to(model.device, non_blocking=True).contiguous(memory_format=model.memory_format)
    dtype = model.autocast_dtype
    with torch.inference_mode(), torch.autocast(model.device.type, dtype=dtype or torch.float32,
                                                 enabled=dtype is not None):
        probabilities = torch.softmax(model.module(images).float(), dim=1).cpu()
    return serving.Predictions(probabilities, list(input_data.top_k), model.classes, model.model_version)


def output_fn(prediction: serving.Predictions, accept) -> tuple[str, str]:
    """``(JSON body, "application/json")``: ``{"predictions": [[{"label", "probability"}, ...] per image],
    "model_version": ...}``. Raises RequestError(406) when the Accept header excludes JSON."""
    return serving.encode_predictions(prediction, accept)
