"""entrypoints/inference.py: the SageMaker serving handlers called in-process, as the AWS toolkit calls them."""

from __future__ import annotations

import base64
import io
import json

import inference
import numpy as np
import pytest
from PIL import Image
from test_serving_model import CLASSES, ENTRYPOINTS, held_out, model_archive

from imgclf.serving import RequestError


class ToolkitContext:
    """TorchServe's Context as the SageMaker toolkit hands it to handlers: request headers via request_processor."""

    def __init__(self, headers: dict):
        self.system_properties = {"model_dir": "", "gpu_id": None}
        self.request_processor = [self]
        self._headers = headers

    def get_request_properties(self) -> dict:
        return self._headers


@pytest.fixture(scope="module")
def model():
    assert inference.__file__ == str(ENTRYPOINTS / "inference.py")
    return inference.model_fn(str(model_archive() / "model"))


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return buffer.getvalue()


def jpeg(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).convert("RGB").save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def round_trip(model, body, content_type, accept="application/json", context=None) -> dict:
    batch = inference.input_fn(body, content_type, context)
    body, response_type = inference.output_fn(inference.predict_fn(batch, model), accept)
    assert response_type == "application/json"
    return json.loads(body)


def test_model_fn_loads_the_archive(model):
    assert model.classes == CLASSES
    assert not model.module.training
    assert model.config["crop_size"] == 16


def test_png_and_jpeg_round_trip_to_labelled_probabilities(model):
    samples = held_out(60)
    payload = json.dumps([base64.b64encode(png(image)).decode() for image, _ in samples])
    answers = round_trip(model, payload, "application/json")["predictions"]
    accuracy = np.mean([items[0]["label"] == str(label) for items, (_, label) in zip(answers, samples, strict=True)])
    assert accuracy > 0.6  # chance is 0.1
    for (image, _), batched in list(zip(samples, answers, strict=True))[:6]:
        from_png = round_trip(model, png(image), "image/png")["predictions"][0]
        from_jpeg = round_trip(model, jpeg(image), "image/jpeg")["predictions"][0]
        assert len(from_png) == 5 and [set(item) for item in from_png] == [{"label", "probability"}] * 5
        probabilities = [item["probability"] for item in from_png]
        assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1.0 + 1e-4
        assert [item["label"] for item in from_png] == [item["label"] for item in batched]
        assert from_jpeg[0]["probability"] == pytest.approx(from_png[0]["probability"], abs=0.15)
        if from_png[0]["probability"] > 0.9:  # a confident answer survives JPEG compression
            assert from_jpeg[0]["label"] == from_png[0]["label"]


def test_json_body_as_str_or_bytes_gives_one_answer_per_image(model):
    images = [image for image, _ in held_out(3)]
    payload = json.dumps({"instances": [{"b64": base64.b64encode(png(im)).decode()} for im in images]})
    as_str = round_trip(model, payload, "application/json")  # the toolkit decodes JSON bodies to str
    as_bytes = round_trip(model, payload.encode(), "application/json")
    singles = [round_trip(model, png(im), "image/png")["predictions"][0] for im in images]
    assert as_str == as_bytes
    for batched, single in zip(as_str["predictions"], singles, strict=True):
        assert [item["label"] for item in batched] == [item["label"] for item in single]
        assert [item["probability"] for item in batched] == pytest.approx([item["probability"] for item in single],
                                                                          abs=1e-5)


def test_top_k_comes_from_the_toolkit_context(model):
    image = png(held_out(1)[0][0])
    custom = ToolkitContext({"X-Amzn-SageMaker-Custom-Attributes": "top_k=2"})
    assert len(round_trip(model, image, "image/png", context=custom)["predictions"][0]) == 2
    header = ToolkitContext({"x-top-k": "7"})
    assert len(round_trip(model, image, "image/png", context=header)["predictions"][0]) == 7
    assert len(round_trip(model, image, "image/png", context=ToolkitContext({"X-Top-K": "99"}))["predictions"][0]) \
        == len(CLASSES)


def test_model_version_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("IMGCLF_MODEL_PACKAGE_VERSION", "image-classifier/3")
    served = inference.model_fn(str(model_archive() / "model"))
    answer = round_trip(served, png(held_out(1)[0][0]), "image/png")
    assert answer["model_version"] == "image-classifier/3"


@pytest.mark.parametrize("body, content_type, status, words", [
    (b"abc", "text/csv", 415, "unsupported Content-Type"),
    (b"", "image/png", 400, "empty"),
    (b"not an image at all", "application/x-image", 400, "not an image"),
    ("{oops", "application/json", 400, "not valid JSON"),
    (b"\x00" * (6 * 1024 * 1024 + 1), "image/jpeg", 413, "6 MB"),
])
def test_input_fn_rejects_bad_bodies_with_their_status(model, body, content_type, status, words):
    with pytest.raises(RequestError) as caught:
        inference.input_fn(body, content_type)
    assert caught.value.status_code == status and words in caught.value.message


def test_output_fn_refuses_an_accept_it_cannot_produce(model):
    prediction = inference.predict_fn(inference.input_fn(png(held_out(1)[0][0]), "image/png"), model)
    with pytest.raises(RequestError) as caught:
        inference.output_fn(prediction, "text/csv")
    assert caught.value.status_code == 406
    assert json.loads(inference.output_fn(prediction, "*/*")[0])["predictions"]


def test_predictions_do_not_depend_on_batch_neighbours(model):
    images = [image for image, _ in held_out(4)]
    batches = [inference.input_fn(png(im), "image/png") for im in images]
    together = inference.predict_fn(type(batches[0]).concat(batches), model).split([1] * 4)
    for batch, part in zip(batches, together, strict=True):
        alone = inference.predict_fn(batch, model)
        assert np.allclose(alone.probabilities.numpy(), part.probabilities.numpy(), atol=1e-5)
