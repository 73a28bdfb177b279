"""entrypoints/imgclf/serving.py: request headers, decoding rules and top-k labelling (no model needed)."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from test_serving_model import ENTRYPOINTS  # noqa: F401  (puts entrypoints/ on sys.path)

from imgclf import serving
from imgclf.serving import RequestError


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def status_of(call, *args, **kwargs) -> tuple[int, str]:
    with pytest.raises(RequestError) as caught:
        call(*args, **kwargs)
    return caught.value.status_code, caught.value.message


@pytest.mark.parametrize("headers, expected", [
    ({}, 5),
    ({"X-Top-K": "3"}, 3),
    ({"x-top-k": " 4 "}, 4),
    ({"X-Amzn-SageMaker-Custom-Attributes": "top_k=2"}, 2),
    ({"x-amzn-sagemaker-custom-attributes": "trace_id=7; top_k=6"}, 6),
    ({"X-Amzn-SageMaker-Custom-Attributes": "top-k=1,other=x"}, 1),
    ({"X-Amzn-SageMaker-Custom-Attributes": "nothing=here"}, 5),
    ({"X-Top-K": "2", "X-Amzn-SageMaker-Custom-Attributes": "top_k=9"}, 2),  # the explicit header wins
    ({b"x-top-k": b"8"}, 8),
])
def test_top_k_from_headers(headers, expected):
    assert serving.top_k_from_headers(headers) == expected


@pytest.mark.parametrize("headers", [{"X-Top-K": "many"}, {"X-Top-K": "0"}, {"X-Top-K": "-2"},
                                     {"X-Amzn-SageMaker-Custom-Attributes": "top_k=1.5"}])
def test_bad_top_k_is_a_400_naming_its_source(headers):
    status, message = status_of(serving.top_k_from_headers, headers)
    assert status == 400 and ("X-Top-K" in message or "CustomAttributes" in message)


@pytest.mark.parametrize("accept", [None, "", "*/*", "application/*", "application/json",
                                    "text/html, application/json;q=0.8", "APPLICATION/JSON; charset=utf-8"])
def test_accept_that_allows_json(accept):
    assert serving.choose_accept(accept) == "application/json"


@pytest.mark.parametrize("accept", ["text/csv", "application/x-npy", "image/png, text/plain"])
def test_accept_without_json_is_406(accept):
    status, message = status_of(serving.choose_accept, accept)
    assert status == 406 and accept in message


def test_media_type_ignores_case_and_parameters():
    assert serving.media_type("Image/PNG; charset=binary") == "image/png"
    assert serving.media_type(None) == ""


def test_npy_shapes_and_dtypes_become_rgb_images():
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8)
    (single,) = serving.array_to_images(gray)
    assert single.mode == "RGB" and single.size == (8, 8)
    assert np.array_equal(np.asarray(single)[..., 0], gray)
    batch = serving.array_to_images(np.zeros((3, 5, 7, 3), np.uint8))
    assert len(batch) == 3 and batch[0].size == (7, 5)
    floats = serving.array_to_images(np.full((4, 4, 1), 0.5, np.float32))
    assert np.asarray(floats[0])[0, 0, 0] == 128
    transparent = np.zeros((4, 4, 4), np.uint8)  # RGBA fully transparent: composited on white, like PNG
    assert np.asarray(serving.array_to_images(transparent)[0]).min() == 255
    assert np.asarray(serving.array_to_images(np.ones((2, 2), bool))[0]).max() == 255
    assert serving.array_to_images(np.full((2, 2), 200, np.int64))[0].getpixel((0, 0)) == (200, 200, 200)


@pytest.mark.parametrize("array, status, words", [
    (np.zeros((2, 2, 2, 2, 2), np.uint8), 400, "not an image"),
    (np.zeros((4, 4, 2), np.uint8), 400, "C in 1, 3, 4"),
    (np.zeros((0, 4), np.uint8), 400, "not an image"),
    (np.full((4, 4), np.nan, np.float32), 400, "finite values in [0, 1]"),
    (np.full((4, 4), 255.0), 400, "[0, 1]"),
    (np.full((4, 4), 300, np.int32), 400, "0-255"),
    (np.zeros((4, 4), np.complex64), 400, "not an image type"),
    (np.zeros((257, 2, 2, 1), np.uint8), 413, "257 images"),
])
def test_bad_npy_arrays(array, status, words):
    got, message = status_of(serving.array_to_images, array)
    assert got == status and words in message


def test_pixel_limit_is_checked_before_decoding():
    big = png(Image.new("L", (300, 200)))
    status, message = status_of(serving.decode_image_bytes, big, max_pixels=50_000)
    assert status == 413 and "300x200" in message
    assert serving.decode_image_bytes(big, max_pixels=60_000).size == (300, 200)
    status, _ = status_of(serving.array_to_images, np.zeros((300, 200), np.uint8), max_pixels=50_000)
    assert status == 413


def test_json_shapes():
    encoded = base64.b64encode(png(Image.new("RGB", (3, 2), (9, 8, 7)))).decode()
    for payload in ({"instances": [{"b64": encoded}, encoded]}, [encoded], {"b64": encoded},
                    {"instances": [f"data:image/png;base64,{encoded}"]},
                    [encoded.replace("+", "-").replace("/", "_").rstrip("=")]):
        images = serving.json_to_images(json.dumps(payload))
        assert all(image.size == (3, 2) and image.getpixel((0, 0)) == (9, 8, 7) for image in images)
    status, message = status_of(serving.json_to_images, json.dumps({"instances": [{"b64": encoded}, 42]}))
    assert status == 400 and "instances[1]" in message
    status, message = status_of(serving.json_to_images, json.dumps([encoded] * 257))
    assert status == 413


def test_request_error_carries_status_and_message():
    error = RequestError(415, "unsupported Content-Type 'x'")
    assert (error.status_code, error.message, error.phrase) == (415, "unsupported Content-Type 'x'",
                                                                "Unsupported Media Type")
    assert str(error) == "415: unsupported Content-Type 'x'"


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 12), st.lists(st.integers(1, 20), min_size=1, max_size=5), st.integers(0, 2**16))
def test_top_k_labels_are_sorted_clamped_and_distinct(classes, top_k, seed):
    probabilities = torch.softmax(torch.randn(len(top_k), classes, generator=torch.Generator().manual_seed(seed)), 1)
    names = [f"class {i}" for i in range(classes)]
    rows = serving.top_k_labels(probabilities, names, top_k)
    for row, k, expected in zip(rows, top_k, probabilities, strict=True):
        assert len(row) == min(k, classes)
        assert len({item["label"] for item in row}) == len(row)
        values = [item["probability"] for item in row]
        assert values == sorted(values, reverse=True)
        assert values[0] == pytest.approx(float(expected.max()), abs=1e-6)


def test_constants_shared_with_the_server_agree():
    """The server cannot import the archive's imgclf (it must not shadow it), so it repeats two constants."""
    from pipeline.serving import server

    assert server.MAX_PAYLOAD_BYTES == serving.MAX_PAYLOAD_BYTES
    assert server.MODEL_VERSION_ENV == serving.MODEL_VERSION_ENV


TOOLKIT_ERRORS = '''
class BaseInferenceToolkitError(Exception):
    def __init__(self, status_code, message, phrase):
        self.status_code = status_code
        self.message = message
        self.phrase = phrase
        super(BaseInferenceToolkitError, self).__init__(status_code, message, phrase)
'''


def test_request_error_is_the_toolkit_error_inside_the_aws_container(tmp_path, monkeypatch):
    """With sagemaker_inference installed (the AWS PyTorch inference container), RequestError subclasses its
    BaseInferenceToolkitError (same constructor as sagemaker_inference/errors.py), so the toolkit answers with our
    status code instead of 500."""
    import importlib.util
    import sys

    package = tmp_path / "sagemaker_inference"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "errors.py").write_text(TOOLKIT_ERRORS)
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = importlib.util.spec_from_file_location("serving_in_container", serving.__file__)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    try:
        spec.loader.exec_module(module)
        from sagemaker_inference.errors import BaseInferenceToolkitError

        error = module.RequestError(413, "too big")
        assert isinstance(error, BaseInferenceToolkitError)
        assert (error.status_code, error.message, error.phrase) == (413, "too big", "Payload Too Large")
    finally:
        for name in ("sagemaker_inference", "sagemaker_inference.errors", spec.name):
            sys.modules.pop(name, None)
