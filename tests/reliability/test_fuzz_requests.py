"""Untrusted requests: hypothesis throws random bytes, random JSON and mutated images at ``inference.input_fn``
(in-process, every content type) and at the running local endpoint. Every answer must be a success or a 4xx
:class:`imgclf.serving.RequestError`; never a 5xx, another exception, or a dead server.

Bounded: ``max_examples`` per property (below), no deadline, so the module runs in well under a minute.
"""

from __future__ import annotations

import base64
import io
import json

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from imgclf.serving import SUPPORTED_CONTENT_TYPES, ImageBatch, RequestError
from pipeline.serving.server import start_in_background

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                          HealthCheck.too_slow])
CONTENT_TYPES = st.one_of(st.sampled_from(SUPPORTED_CONTENT_TYPES),
                          st.sampled_from(["text/plain", "", "image/PNG; charset=binary", "application/json; x=y",
                                           "multipart/form-data; boundary=x", "application/octet-stream"]),
                          st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40).map(str.strip))
# Printable ASCII without surrounding blanks: what HTTP allows in a header value (h11 refuses anything else).
HEADER_TEXT = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=30).map(str.strip)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20,
)


def _png(size: int = 16) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.arange(size * size, dtype=np.uint8).reshape(size, size)).save(buffer, "PNG")
    return buffer.getvalue()


VALID_IMAGES = [_png(), _png(40)]


@st.composite
def mutated_images(draw) -> bytes:
    """A valid PNG with a few bytes flipped, cut short or extended: reaches deep into the decoders."""
    data = bytearray(draw(st.sampled_from(VALID_IMAGES)))
    for _ in range(draw(st.integers(1, 6))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    cut = draw(st.integers(8, len(data)))
    return bytes(data[:cut]) + draw(st.binary(max_size=16))


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


NPY_ARRAYS = hnp.arrays(
    dtype=st.sampled_from([np.uint8, np.int16, np.int64, np.float32, np.float64, np.bool_, np.complex64]),
    shape=hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=6),
)
BODIES = st.one_of(
    st.binary(max_size=2048),
    mutated_images(),
    NPY_ARRAYS.map(npy_bytes),
    JSON_VALUES.map(lambda v: json.dumps(v).encode()),
    st.lists(st.one_of(mutated_images(), st.binary(max_size=64)), min_size=1, max_size=3).map(
        lambda items: json.dumps({"instances": [{"b64": base64.b64encode(i).decode()} for i in items]}).encode()),
)


@pytest.fixture(scope="module")
def inference(tiny_model):
    """entrypoints/inference.py with its model loaded, as the AWS toolkit holds it."""
    import inference as module

    model = module.model_fn(str(tiny_model / "model"))
    return module, model


def _handle(inference, body, content_type) -> None:
    """Run the handlers on one request; only success or a 4xx RequestError may come out."""
    module, model = inference
    try:
        batch = module.input_fn(body, content_type)
    except RequestError as error:
        assert 400 <= error.status_code < 500, error
        assert error.message
        return
    assert isinstance(batch, ImageBatch) and len(batch) >= 1
    body, response_type = module.output_fn(module.predict_fn(batch, model), "application/json")
    assert response_type == "application/json" and len(json.loads(body)["predictions"]) == len(batch)


@FUZZ
@given(body=BODIES, content_type=CONTENT_TYPES)
def test_input_fn_answers_random_bodies_with_4xx_only(inference, body, content_type):
    _handle(inference, body, content_type)


@FUZZ
@given(value=JSON_VALUES, as_text=st.booleans())
def test_input_fn_answers_random_json_with_4xx_only(inference, value, as_text):
    text = json.dumps(value)
    _handle(inference, text if as_text else text.encode(), "application/json")


@FUZZ
@given(text=st.text(max_size=200))
def test_input_fn_answers_arbitrary_unicode_json_text_with_4xx_only(inference, text):
    _handle(inference, text, "application/json")


@pytest.fixture(scope="module")
def endpoint(tiny_model, tmp_path_factory):
    handle = start_in_background(tiny_model / "model.tar.gz", num_threads=1,
                                 log_path=tmp_path_factory.mktemp("fuzz-endpoint") / "endpoint.log")
    try:
        with httpx.Client(base_url=handle.url, timeout=30) as client:
            yield handle, client
    finally:
        handle.stop()


@FUZZ
@given(body=BODIES, content_type=CONTENT_TYPES, accept=st.none() | st.sampled_from(["*/*", "application/json",
       "text/csv", "image/*"]) | HEADER_TEXT, top_k=st.none() | HEADER_TEXT | st.integers(-3, 50).map(str),
       custom=st.none() | HEADER_TEXT, query=st.none() | HEADER_TEXT)
def test_server_answers_random_requests_with_4xx_only(endpoint, body, content_type, accept, top_k, custom, query):
    handle, client = endpoint
    headers = {"Content-Type": content_type}
    for name, value in (("Accept", accept), ("X-Top-K", top_k), ("X-Amzn-SageMaker-Custom-Attributes", custom)):
        if value is not None:
            headers[name] = value
    params = {"top_k": query} if query is not None else None
    response = client.post("/invocations", content=body, headers=headers, params=params)
    assert response.status_code == 200 or 400 <= response.status_code < 500, (response.status_code, response.text)
    if response.status_code != 200:
        assert response.json()["error"], response.text
    assert handle.running(), handle.log_tail()


def test_server_is_healthy_after_the_fuzzing(endpoint):
    handle, client = endpoint
    assert client.get("/ping").status_code == 200
    answer = client.post("/invocations", content=VALID_IMAGES[0], headers={"Content-Type": "image/png"})
    assert answer.status_code == 200 and len(answer.json()["predictions"]) == 1
    assert "Traceback" not in handle.log_tail(200), handle.log_tail(200)
