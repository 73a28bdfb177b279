"""Endpoint requests -> image tensors, predictions -> JSON, and bad requests -> errors with an HTTP status code.

Used by ``inference.py`` (the SageMaker PyTorch serving handlers) inside the AWS PyTorch inference container and
by the local server (``python -m pipeline serve``). Nothing here knows about HTTP servers: the handlers raise
:class:`RequestError` and whoever serves them turns it into the status code and ``{"error": message}``.

Request contract (docs/serving.md):

- ``Content-Type``: ``image/jpeg``, ``image/png``, ``image/webp``, ``application/x-image`` (any format PIL reads),
  ``application/x-npy`` (one ``HxW``/``HxWxC`` image or an ``NxHxWxC`` batch, ``uint8`` 0-255 or float 0-1) or
  ``application/json`` (``{"instances": [{"b64": "..."}, ...]}``, ``{"b64": "..."}`` or a list of base64 strings).
- ``top_k``: header ``X-Top-K`` (the local server also maps the query parameter ``?top_k=`` onto it), else
  ``top_k=N`` in SageMaker's CustomAttributes (header ``X-Amzn-SageMaker-Custom-Attributes``), else 5.
- ``Accept``: ``application/json`` (or ``*/*``, ``application/*``).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from imgclf.data import MAX_IMAGE_PIXELS, ImageError, decode_image, to_rgb
from imgclf.precision import forward_seconds

try:  # inside the AWS PyTorch inference container: its toolkit maps these errors to their status code
    from sagemaker_inference.errors import BaseInferenceToolkitError as _ErrorBase
except ImportError:  # the local server reads .status_code and .message the same way
    class _ErrorBase(Exception):
        def __init__(self, status_code: int, message: str, phrase: str):
            super().__init__(status_code, message, phrase)
            self.status_code, self.message, self.phrase = status_code, message, phrase

#: SageMaker real-time InvokeEndpoint payload limit (6 MB), also the local server's request body limit.
MAX_PAYLOAD_BYTES = 6 * 1024 * 1024
#: Most images in one request; more would hold the single inference worker for too long.
MAX_IMAGES_PER_REQUEST = 256
DEFAULT_TOP_K = 5
TOP_K_HEADER = "X-Top-K"
CUSTOM_ATTRIBUTES_HEADER = "X-Amzn-SageMaker-Custom-Attributes"
#: Environment variable holding the model package version (e.g. ``image-classifier/3``) echoed in responses.
MODEL_VERSION_ENV = "IMGCLF_MODEL_PACKAGE_VERSION"

JSON = "application/json"
NPY = "application/x-npy"
IMAGE_CONTENT_TYPES = ("image/jpeg", "image/png", "image/webp", "application/x-image")
SUPPORTED_CONTENT_TYPES = (*IMAGE_CONTENT_TYPES, NPY, JSON)
SUPPORTED_ACCEPT = (JSON,)

_PHRASES = {400: "Bad Request", 406: "Not Acceptable", 413: "Payload Too Large", 415: "Unsupported Media Type",
            503: "Service Unavailable"}


class RequestError(_ErrorBase):
    """A request the endpoint refuses. ``status_code`` is the HTTP status; ``message`` names the problem and fix.

    Codes: 400 empty/undecodable body or bad JSON or bad top_k, 406 unsupported Accept, 413 payload or image too
    large, 415 unsupported Content-Type. Subclasses ``sagemaker_inference``'s BaseInferenceToolkitError where that
    toolkit is installed (the AWS PyTorch inference container), so AWS answers with the same status code.
    """

    def __init__(self, status_code: int, message: str):
        super().__init__(status_code, message, _PHRASES.get(status_code, "Error"))
        self.status_code, self.message = status_code, message

    def __str__(self) -> str:
        return f"{self.status_code}: {self.message}"


# -- headers -----------------------------------------------------------------------------------------------------


def media_type(content_type: str | None) -> str:
    """``"Image/PNG; charset=x"`` -> ``"image/png"``; None -> ``""``."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def header(headers: Mapping | None, name: str) -> str | None:
    """Case-insensitive header lookup (TorchServe and Starlette spell header names differently)."""
    if not headers:
        return None
    wanted = name.lower()
    for key, value in headers.items():
        key = key.decode("latin-1") if isinstance(key, bytes) else str(key)
        if key.lower() == wanted:
            return value.decode("latin-1") if isinstance(value, bytes) else str(value)
    return None


def parse_top_k(value: str | int, source: str) -> int:
    """Parse a top_k value (an integer >= 1). Raises RequestError(400) naming ``source`` when it is not one."""
    try:
        top_k = int(str(value).strip())
    except ValueError:
        raise RequestError(400, f"{source} must be a whole number >= 1, got {value!r}") from None
    if top_k < 1:
        raise RequestError(400, f"{source} must be a whole number >= 1, got {top_k}")
    return top_k


def top_k_from_headers(headers: Mapping | None) -> int:
    """The requested top_k: header ``X-Top-K``, else ``top_k=N`` in the CustomAttributes header, else 5.

    CustomAttributes is SageMaker's free-form string (``InvokeEndpoint(CustomAttributes="top_k=3")``); pairs may be
    separated by ``;`` or ``,``; other keys are ignored.
    """
    value = header(headers, TOP_K_HEADER)
    if value is not None and value.strip():
        return parse_top_k(value, f"top_k (header {TOP_K_HEADER} or query parameter ?top_k=)")
    attributes = header(headers, CUSTOM_ATTRIBUTES_HEADER) or ""
    for pair in attributes.replace(",", ";").split(";"):
        key, _, raw = pair.partition("=")
        if key.strip().lower() in ("top_k", "top-k", "topk"):
            return parse_top_k(raw, f"CustomAttributes top_k ({CUSTOM_ATTRIBUTES_HEADER})")
    return DEFAULT_TOP_K


def choose_accept(accept: str | None) -> str:
    """Return the response content type for an Accept header. Raises RequestError(406) when JSON is not accepted.

    A missing Accept, ``*/*``, ``application/*`` and ``application/json`` (with or without ``;q=``) all give JSON.
    """
    if not accept or not accept.strip():
        return JSON
    for item in accept.split(","):
        if media_type(item) in (JSON, "*/*", "application/*"):
            return JSON
    raise RequestError(406, f"cannot answer with Accept {accept!r}: this endpoint returns {', '.join(SUPPORTED_ACCEPT)}"
                            " (send Accept: application/json or */*)")


# -- decoding ----------------------------------------------------------------------------------------------------


def _check_pixels(width: int, height: int, max_pixels: int, what: str) -> None:
    if width * height > max_pixels:
        raise RequestError(413, f"{what}: {width}x{height} = {width * height} pixels is over the limit of "
                                f"{max_pixels} pixels: send a smaller image")


def decode_image_bytes(data: bytes, max_pixels: int = MAX_IMAGE_PIXELS, what: str = "image") -> Image.Image:
    """Decode one encoded image (any PIL format and mode, EXIF orientation applied) into an RGB PIL image.

    Raises:
        RequestError: 400 empty or undecodable bytes; 413 more than ``max_pixels`` pixels (decompression bombs are
            refused from the header, before any pixel is decoded).
    """
    if not data:
        raise RequestError(400, f"{what} is empty (0 bytes): send the image file's bytes")
    try:
        with Image.open(io.BytesIO(data)) as probe:
            _check_pixels(*probe.size, max_pixels, what)
    except Image.DecompressionBombError as error:
        raise RequestError(413, f"{what} is over the pixel limit ({error})") from error
    except RequestError:
        raise
    except Exception as error:  # PIL raises many types for a header it cannot parse
        raise RequestError(400, f"{what} is not an image PIL can read (unknown or corrupt data): "
                                f"send a JPEG, PNG or WebP file") from error
    try:
        return decode_image(data, max_pixels)
    except ImageError as error:
        raise RequestError(400, f"{what} cannot be decoded: {error}") from error


def array_to_images(array: np.ndarray, max_pixels: int = MAX_IMAGE_PIXELS) -> list[Image.Image]:
    """An npy array -> RGB PIL images.

    Shapes: ``HxW`` (grayscale), ``HxWxC`` (C = 1, 3 or 4) or ``NxHxWxC``. Values: ``uint8`` 0-255, other integer
    types within 0-255, ``bool``, or floats in [0, 1] (torchvision's ``ToTensor`` scale). Four channels are RGBA,
    composited on white as for PNG.

    Raises:
        RequestError: 400 for another shape, dtype or value range; 413 for too many images or pixels.
    """
    if array.ndim == 2:
        array = array[None, :, :, None]
    elif array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[-1] not in (1, 3, 4) or 0 in array.shape:
        raise RequestError(400, f"npy array of shape {tuple(array.shape)} is not an image: send HxW, HxWxC or "
                                "NxHxWxC with C in 1, 3, 4 (channels last)")
    if len(array) > MAX_IMAGES_PER_REQUEST:
        raise RequestError(413, f"{len(array)} images in one request, over the limit of {MAX_IMAGES_PER_REQUEST}: "
                                "split the batch")
    _check_pixels(array.shape[2], array.shape[1], max_pixels, "npy image")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min() < 0.0 or array.max() > 1.0:
            raise RequestError(400, "float npy arrays must hold finite values in [0, 1]: scale them, or send uint8 "
                                    "0-255")
        array = np.round(array * 255.0).astype(np.uint8)
    elif np.issubdtype(array.dtype, np.integer):
        if array.min() < 0 or array.max() > 255:
            raise RequestError(400, f"integer npy arrays must hold values in 0-255, got {array.min()}..{array.max()}"
                                    ": send uint8")
        array = array.astype(np.uint8)
    else:
        raise RequestError(400, f"npy dtype {array.dtype} is not an image type: send uint8 0-255 or float 0-1")
    modes = {1: "L", 3: "RGB", 4: "RGBA"}
    return [to_rgb(Image.fromarray(np.ascontiguousarray(image[..., 0] if image.shape[-1] == 1 else image),
                                   mode=modes[image.shape[-1]]))
            for image in array]


def _b64_items(payload) -> list:
    if isinstance(payload, dict):
        if "instances" in payload:
            payload = payload["instances"]
        elif "b64" in payload:
            payload = [payload]
    if not isinstance(payload, list):
        raise RequestError(400, 'JSON body must be {"instances": [{"b64": "<base64 image>"}, ...]} or a list of '
                                "base64 strings")
    return payload


def _b64decode(text: str, what: str) -> bytes:
    if text.startswith("data:") and "," in text:  # a data URL: data:image/png;base64,....
        text = text.split(",", 1)[1]
    text = "".join(text.split())
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        try:
            return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except (binascii.Error, ValueError) as error:
            raise RequestError(400, f"{what} is not valid base64: {error}") from error


def json_to_images(body: str | bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> list[Image.Image]:
    """A JSON body of base64-encoded images -> RGB PIL images (see the module docstring for the shapes).

    Raises:
        RequestError: 400 bad JSON, wrong shape, bad base64 or an undecodable image (its index is named); 413 too
            many images or an image over the pixel limit.
    """
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RequestError(400, f"body is not valid JSON: {error}") from error
    items = _b64_items(payload)
    if not items:
        raise RequestError(400, "JSON body holds no images: put at least one base64 image in \"instances\"")
    if len(items) > MAX_IMAGES_PER_REQUEST:
        raise RequestError(413, f"{len(items)} images in one request, over the limit of {MAX_IMAGES_PER_REQUEST}: "
                                "split the batch")
    images = []
    for index, item in enumerate(items):
        what = f"instances[{index}]"
        if isinstance(item, dict) and isinstance(item.get("b64"), str):
            item = item["b64"]
        if not isinstance(item, str):
            raise RequestError(400, f'{what} must be {{"b64": "<base64 image>"}} or a base64 string, got '
                                    f"{type(item).__name__}")
        images.append(decode_image_bytes(_b64decode(item, what), max_pixels, what))
    return images


def decode_request(body: bytes | str | None, content_type: str | None,
                   max_pixels: int = MAX_IMAGE_PIXELS) -> list[Image.Image]:
    """Decode a request body into RGB PIL images, one per image in the request.

    Raises:
        RequestError: 415 unsupported content type; 413 body over 6 MB; 400/413 from the decoders above.
    """
    kind = media_type(content_type)
    if not kind:
        raise RequestError(415, f"the Content-Type header is missing: send one of {', '.join(SUPPORTED_CONTENT_TYPES)}")
    if kind not in SUPPORTED_CONTENT_TYPES:
        raise RequestError(415, f"unsupported Content-Type {content_type!r}: send one of "
                                f"{', '.join(SUPPORTED_CONTENT_TYPES)}")
    if body is None or len(body) == 0:
        raise RequestError(400, "request body is empty: send an image (or a JSON/npy batch of images)")
    if len(body) > MAX_PAYLOAD_BYTES:
        raise RequestError(413, f"payload of {len(body)} bytes is over SageMaker's real-time limit of "
                                f"{MAX_PAYLOAD_BYTES} bytes (6 MB): send fewer or smaller images")
    if kind == JSON:
        return json_to_images(body, max_pixels)
    data = body.encode("utf-8") if isinstance(body, str) else bytes(body)
    if kind == NPY:
        try:
            array = np.load(io.BytesIO(data), allow_pickle=False)
        except Exception as error:  # numpy raises ValueError, OSError, EOFError... for a bad file
            raise RequestError(400, f"body is not a valid .npy array ({type(error).__name__}: {error}): send "
                                    "numpy.save output, uint8 HxWxC") from error
        if not isinstance(array, np.ndarray):
            raise RequestError(400, "body is an .npz archive, not an .npy array: send numpy.save output")
        return array_to_images(array, max_pixels)
    return [decode_image_bytes(data, max_pixels, "body")]


# -- batches and predictions -----------------------------------------------------------------------------------


@dataclass
class ImageBatch:
    """What ``input_fn`` returns: preprocessed images and the top_k each one asked for.

    ``images`` is ``float32 (N, 3, crop, crop)``, normalised by the model's eval preset. ``concat`` lets a server
    coalesce several requests into one forward pass (dynamic batching); ``len`` counts images.
    """

    images: torch.Tensor
    top_k: list[int]

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @classmethod
    def concat(cls, batches: Sequence[ImageBatch]) -> ImageBatch:
        return cls(torch.cat([b.images for b in batches]), [k for b in batches for k in b.top_k])


@dataclass
class Predictions:
    """What ``predict_fn`` returns: class probabilities ``float32 (N, num_classes)`` on the CPU, plus what
    ``output_fn`` needs to label them (it receives no model in SageMaker's contract)."""

    probabilities: torch.Tensor
    top_k: list[int]
    classes: list[str]
    model_version: str | None = None

    def split(self, sizes: Sequence[int]) -> list[Predictions]:
        """Split rows back into per-request predictions (the inverse of :meth:`ImageBatch.concat`)."""
        out, start = [], 0
        for size in sizes:
            out.append(Predictions(self.probabilities[start:start + size], self.top_k[start:start + size],
                                   self.classes, self.model_version))
            start += size
        return out


def top_k_labels(probabilities: torch.Tensor, classes: Sequence[str], top_k: Sequence[int]) -> list[list[dict]]:
    """Per row, the ``top_k[row]`` most probable classes (clamped to the class count), most probable first:
    ``[[{"label": "7", "probability": 0.98}, ...], ...]``; probabilities rounded to 6 decimals."""
    if len(probabilities) == 0:
        return []
    k_max = min(max(top_k), len(classes))
    values, indices = probabilities.float().topk(k_max, dim=1)
    results = []
    for row, k in enumerate(top_k):
        k = min(k, len(classes))
        results.append([{"label": classes[int(i)], "probability": round(float(p), 6)}
                        for p, i in zip(values[row, :k].tolist(), indices[row, :k].tolist(), strict=True)])
    return results


def encode_predictions(prediction: Predictions, accept: str | None) -> tuple[str, str]:
    """``Predictions`` -> ``(JSON body, content type)``: ``{"predictions": [[{"label", "probability"}, ...], ...],
    "model_version": str | null}`` with one list per image, in request order. Raises RequestError(406)."""
    content_type = choose_accept(accept)
    body = {"predictions": top_k_labels(prediction.probabilities, prediction.classes, prediction.top_k),
            "model_version": prediction.model_version}
    return json.dumps(body, ensure_ascii=False), content_type


# -- model ---------------------------------------------------------------------------------------------------------


@dataclass
class ServedModel:
    """What ``model_fn`` returns: the network in eval mode and what requests need to use it."""

    module: torch.nn.Module
    classes: list[str]
    config: dict
    preset: object  # imgclf.presets.ClassificationPresetEval
    device: torch.device
    memory_format: torch.memory_format = torch.contiguous_format
    model_version: str | None = None
    #: torch.autocast dtype of the forward pass (None: fp32); see imgclf.precision.pick_serving_autocast.
    autocast_dtype: torch.dtype | None = None


def model_version_from_env() -> str | None:
    """The model package version to echo in responses, from :data:`MODEL_VERSION_ENV` (None when unset)."""
    return os.environ.get(MODEL_VERSION_ENV) or None


def pick_memory_format(module: torch.nn.Module, example: torch.Tensor, repeats: int = 2) -> torch.memory_format:
    """Return ``torch.channels_last`` when it runs ``module`` on ``example`` faster than contiguous, else contiguous.

    Measured, not assumed: channels_last speeds up convolutions on many CPUs and on GPUs, but not all. The choice
    can be forced with ``IMGCLF_CHANNELS_LAST=1`` or ``0``. Leaves ``module`` in the chosen format. Each format runs
    once to warm up (which also warms the first request) and ``repeats`` times timed.
    """
    forced = os.environ.get("IMGCLF_CHANNELS_LAST", "auto").strip().lower()
    if forced in ("1", "true", "yes", "0", "false", "no"):
        chosen = torch.channels_last if forced in ("1", "true", "yes") else torch.contiguous_format
        module.to(memory_format=chosen)
        return chosen
    timings = {}
    for memory_format in (torch.contiguous_format, torch.channels_last):
        module.to(memory_format=memory_format)
        timings[memory_format] = forward_seconds(module, example.contiguous(memory_format=memory_format), None,
                                                 repeats)
    chosen = min(timings, key=timings.get)
    module.to(memory_format=chosen)
    return chosen
