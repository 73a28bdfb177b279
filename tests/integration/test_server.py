"""Real HTTP against the local endpoint on loopback: every image a user may send, every bad request, /ping, load.

The endpoint runs the trained test archive (tests/unit/test_serving_model.py) through its own code/inference.py in
a child process (``start_in_background``), as the local executor runs it.
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from test_serving_model import CLASSES, held_out, model_archive  # noqa: E402

from imgclf.serving import ImageBatch  # noqa: E402
from pipeline.serving.load import run_load  # noqa: E402
from pipeline.serving.server import EndpointStartError, free_port, start_in_background  # noqa: E402

MODEL_VERSION = "image-classifier/7"


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory):
    handle = start_in_background(model_archive() / "model.tar.gz", num_threads=1, model_version=MODEL_VERSION,
                                 log_path=tmp_path_factory.mktemp("endpoint") / "endpoint.log")
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture(scope="module")
def client(endpoint):
    with httpx.Client(base_url=endpoint.url, timeout=60) as http:
        yield http


def reference_probabilities(images: list[np.ndarray]) -> torch.Tensor:
    """``(N, classes)`` probabilities from the archive's handlers called in this process on PNGs of ``images``: the
    ground truth that the served answers must equal."""
    sys.path.insert(0, str(model_archive() / "model" / "code"))
    import inference

    global _MODEL
    if "_MODEL" not in globals():
        _MODEL = inference.model_fn(str(model_archive() / "model"))
    batch = ImageBatch.concat([inference.input_fn(encode(Image.fromarray(image), "PNG"), "image/png")
                               for image in images])
    return inference.predict_fn(batch, _MODEL).probabilities


@pytest.fixture(scope="module")
def confident_digits() -> list[tuple[np.ndarray, int]]:
    """Held-out digits the model gets right with probability > 0.8, one per label, at least three."""
    samples = held_out(200)
    probabilities = reference_probabilities([image for image, _ in samples])
    chosen: dict[int, np.ndarray] = {}
    for (image, label), row in zip(samples, probabilities, strict=True):
        if label not in chosen and int(row.argmax()) == label and float(row[label]) > 0.8:
            chosen[label] = image
    assert len(chosen) >= 3, f"the test model is too weak: confident on {sorted(chosen)} only"
    return [(image, label) for label, image in sorted(chosen.items())]


def predictions(response: httpx.Response) -> list[list[dict]]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["model_version"] == MODEL_VERSION
    for items in body["predictions"]:
        probabilities = [item["probability"] for item in items]
        assert probabilities == sorted(probabilities, reverse=True)
        assert all(item["label"] in CLASSES for item in items)
        assert 0.0 <= sum(probabilities) <= 1.0 + 1e-4
    return body["predictions"]


def post(client, body: bytes | str, content_type: str | None, **kwargs) -> httpx.Response:
    headers = kwargs.pop("headers", {})
    if content_type is not None:
        headers["Content-Type"] = content_type
    return client.post("/invocations", content=body, headers=headers, **kwargs)


def test_ping_and_execution_parameters(client):
    assert client.get("/ping").status_code == 200
    parameters = client.get("/execution-parameters").json()
    assert parameters == {"MaxConcurrentTransforms": 8, "BatchStrategy": "SINGLE_RECORD", "MaxPayloadInMB": 6}


def _variants(image: np.ndarray) -> dict[str, tuple[bytes, str]]:
    """The same digit in every encoding and mode a user may send."""
    gray = Image.fromarray(image)
    rgba = gray.convert("RGBA")
    palette = gray.convert("P", palette=Image.Palette.ADAPTIVE, colors=256)
    sixteen = Image.fromarray(image.astype(np.uint16) * 257)  # I;16, full 16-bit range
    return {
        "png-gray": (encode(gray, "PNG"), "image/png"),
        "png-rgba": (encode(rgba, "PNG"), "image/png"),
        "png-palette": (encode(palette, "PNG"), "image/png"),
        "png-16bit": (encode(sixteen, "PNG"), "image/png"),
        "jpeg": (encode(gray.convert("RGB"), "JPEG", quality=95), "image/jpeg"),
        "webp": (encode(gray, "WEBP", lossless=True), "image/webp"),
        "x-image-bmp": (encode(gray, "BMP"), "application/x-image"),
        "content-type-params": (encode(gray, "PNG"), "Image/PNG; charset=binary"),
    }


def test_every_image_encoding_and_mode_predicts_the_digit(client, confident_digits):
    image, label = confident_digits[0]
    expected = reference_probabilities([image])[0]
    for name, (body, content_type) in _variants(image).items():
        top = predictions(post(client, body, content_type))
        assert len(top) == 1 and len(top[0]) == 5, name
        assert top[0][0]["label"] == str(label), (name, top)
        if name != "jpeg":  # lossless encodings give exactly the reference's probabilities
            assert top[0][0]["probability"] == pytest.approx(float(expected[label]), abs=1e-4), name


def _exif_rotated(image: Image.Image, fmt: str, **options) -> bytes:
    """``image`` stored turned 90 degrees, with EXIF Orientation 6 ("rotate 90 CW to display") to undo it."""
    stored = image.transpose(Image.Transpose.ROTATE_90)  # counter-clockwise; orientation 6 turns it back
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(stored, fmt, exif=exif, **options)


def test_exif_orientation_is_applied(client, confident_digits):
    image, label = next((im, lb) for im, lb in confident_digits if lb not in (0, 1, 8))  # not symmetric
    gray = Image.fromarray(image)
    upright = predictions(post(client, encode(gray, "PNG"), "image/png", params={"top_k": 10}))[0]
    rotated_png = predictions(post(client, _exif_rotated(gray, "PNG"), "image/png", params={"top_k": 10}))[0]
    assert rotated_png == upright  # lossless: exactly the same answer once EXIF is applied
    rotated_jpeg = predictions(post(client, _exif_rotated(gray.convert("RGB"), "JPEG", quality=95), "image/jpeg"))
    assert rotated_jpeg[0][0]["label"] == str(label)
    # Without the EXIF tag the same stored pixels are a turned digit, answered differently: the check can fail.
    turned = predictions(post(client, encode(gray.transpose(Image.Transpose.ROTATE_90), "PNG"), "image/png",
                              params={"top_k": 10}))[0]
    assert {d["label"]: d["probability"] for d in turned} != {d["label"]: d["probability"] for d in upright}


def test_json_base64_batch_keeps_request_order(client, confident_digits):
    digits = confident_digits[:3]
    encoded = [base64.b64encode(encode(Image.fromarray(im), "PNG")).decode() for im, _ in digits]
    expected = [str(label) for _, label in digits]
    shapes = [
        {"instances": [{"b64": text} for text in encoded]},
        encoded,
        {"instances": [f"data:image/png;base64,{text}" for text in encoded]},
    ]
    for payload in shapes:
        answer = predictions(post(client, json.dumps(payload), "application/json"))
        assert [items[0]["label"] for items in answer] == expected, payload if isinstance(payload, list) else ""


def test_npy_arrays(client, confident_digits):
    digits = confident_digits[:3]
    stack = np.stack([im for im, _ in digits])
    cases = {
        "HxW uint8": stack[0],
        "HxWx3 uint8": np.repeat(stack[0][..., None], 3, axis=2),
        "NxHxWx1 float": stack[..., None].astype(np.float32) / 255.0,
    }
    for name, array in cases.items():
        buffer = io.BytesIO()
        np.save(buffer, array)
        answer = predictions(post(client, buffer.getvalue(), "application/x-npy"))
        labels = [items[0]["label"] for items in answer]
        expected = [str(lb) for _, lb in digits][: len(answer)]
        assert labels == expected, name


def test_top_k_from_query_header_and_custom_attributes(client, confident_digits):
    body = encode(Image.fromarray(confident_digits[0][0]), "PNG")
    assert len(predictions(post(client, body, "image/png"))[0]) == 5
    assert len(predictions(post(client, body, "image/png", params={"top_k": 3}))[0]) == 3
    assert len(predictions(post(client, body, "image/png", headers={"X-Top-K": "2"}))[0]) == 2
    custom = {"X-Amzn-SageMaker-Custom-Attributes": "trace=abc;top_k=1"}
    assert len(predictions(post(client, body, "image/png", headers=custom))[0]) == 1
    assert len(predictions(post(client, body, "image/png", params={"top_k": 50}))[0]) == len(CLASSES)
    assert predictions(post(client, body, "image/png", headers={"Accept": "application/json;q=0.9, text/csv"}))


def _bad_requests() -> dict[str, tuple[dict, int, str]]:
    """name -> (request arguments, expected status, words the error message must hold)."""
    good = encode(Image.fromarray(held_out(1)[0][0]), "PNG")
    npy_wrong_shape, npy_float = io.BytesIO(), io.BytesIO()
    np.save(npy_wrong_shape, np.zeros((2, 3, 5, 7, 2), np.uint8))
    np.save(npy_float, np.full((8, 8), 3.5, np.float32))
    bomb = encode(Image.new("1", (8000, 7000)), "PNG")  # 56 Mpx, a few KB
    too_many = json.dumps({"instances": [{"b64": base64.b64encode(good).decode()}] * 257})
    return {
        "text content type": ({"content": b"hello", "headers": {"Content-Type": "text/plain"}}, 415,
                              "unsupported Content-Type 'text/plain'"),
        "no content type": ({"content": good}, 415, "Content-Type header is missing"),
        "csv accept": ({"content": good, "headers": {"Content-Type": "image/png", "Accept": "text/csv"}}, 406,
                       "Accept 'text/csv'"),
        "empty body": ({"content": b"", "headers": {"Content-Type": "image/png"}}, 400, "body is empty"),
        "truncated png": ({"content": good[: len(good) // 2], "headers": {"Content-Type": "image/png"}}, 400,
                          "cannot be decoded"),
        "not an image": ({"content": b"\x00garbage" * 50, "headers": {"Content-Type": "image/jpeg"}}, 400,
                         "not an image"),
        "bad json": ({"content": b"{not json", "headers": {"Content-Type": "application/json"}}, 400,
                     "not valid JSON"),
        "json wrong shape": ({"content": b'{"data": 1}', "headers": {"Content-Type": "application/json"}}, 400,
                             '"instances"'),
        "json empty list": ({"content": b'{"instances": []}', "headers": {"Content-Type": "application/json"}}, 400,
                            "no images"),
        "json bad base64": ({"content": b'["@@@not base64@@@"]', "headers": {"Content-Type": "application/json"}},
                            400, "instances[0]"),
        "json not utf-8": ({"content": b'["\xff\xfe"]', "headers": {"Content-Type": "application/json"}}, 400,
                           "UTF-8"),
        "bad npy": ({"content": b"\x93NUMPY garbage", "headers": {"Content-Type": "application/x-npy"}}, 400,
                    "not a valid .npy"),
        "npy wrong shape": ({"content": npy_wrong_shape.getvalue(),
                             "headers": {"Content-Type": "application/x-npy"}}, 400, "(2, 3, 5, 7, 2)"),
        "npy float out of range": ({"content": npy_float.getvalue(),
                                    "headers": {"Content-Type": "application/x-npy"}}, 400, "[0, 1]"),
        "bad top_k query": ({"content": good, "headers": {"Content-Type": "image/png"}, "params": {"top_k": "abc"}},
                            400, "top_k (header X-Top-K or query parameter ?top_k=) must be a whole number"),
        "zero top_k header": ({"content": good, "headers": {"Content-Type": "image/png", "X-Top-K": "0"}}, 400,
                              ">= 1"),
        "payload over 6 MB": ({"content": b"\x00" * (6 * 1024 * 1024 + 1), "headers": {"Content-Type": "image/png"}},
                              413, "6 MB"),
        "image over pixel limit": ({"content": bomb, "headers": {"Content-Type": "image/png"}}, 413,
                                   "8000x7000"),
        "too many images": ({"content": too_many, "headers": {"Content-Type": "application/json"}}, 413,
                            "257 images"),
    }


@pytest.mark.parametrize("name", list(_bad_requests()))
def test_bad_request_gets_its_status_and_the_server_keeps_serving(client, endpoint, name):
    arguments, status, words = _bad_requests()[name]
    response = client.post("/invocations", **arguments)
    assert response.status_code == status, response.text
    assert words in response.json()["error"], response.json()
    good = encode(Image.fromarray(held_out(1)[0][0]), "PNG")
    assert predictions(post(client, good, "image/png"))
    assert endpoint.running()


def test_unknown_routes_answer_json_errors(client):
    assert client.get("/nowhere").status_code == 404
    response = client.get("/invocations")
    assert response.status_code == 405 and "POST /invocations" in response.json()["error"]


def test_bounded_load_run_has_no_errors(endpoint, tmp_path, confident_digits):
    for index, (image, label) in enumerate(confident_digits):
        (tmp_path / f"{index}_{label}.png").write_bytes(encode(Image.fromarray(image), "PNG"))
    (tmp_path / "jpeg.jpg").write_bytes(encode(Image.fromarray(confident_digits[0][0]).convert("RGB"), "JPEG"))
    report = run_load(endpoint.url, tmp_path, concurrency=8, requests=200, duration_limit_s=120)
    assert report.statuses == {"200": 200} and report.errors == 0
    assert report.requests_per_s > 0 and 0 < report.percentile(50) <= report.percentile(99)
    assert report.server_stats["images"] == 200 and report.server_stats["batches"] <= 200


def test_wrong_sha256_is_refused(tmp_path):
    with pytest.raises(EndpointStartError, match="SHA-256"):
        start_in_background(model_archive() / "model.tar.gz", sha256="0" * 64, num_threads=1,
                            log_path=tmp_path / "endpoint.log")


SLOW_LOADING_HANDLERS = '''
import time
from pathlib import Path

import torch


def model_fn(model_dir):
    # Loads only once the test creates the flag file, so /ping can be seen answering 503 first.
    flag = Path(model_dir) / "go"
    while not flag.exists():
        time.sleep(0.05)
    return torch.jit.script(_Doubler())


class _Doubler(torch.nn.Module):
    def forward(self, x):
        return x * 2
'''


def test_ping_is_503_until_model_fn_returns_and_default_handlers_fill_in(tmp_path):
    """An archive whose inference.py has only model_fn: the toolkit's default input/predict/output handlers serve
    it (JSON in, JSON out), and /ping says 503 until model_fn returns."""
    model_dir = tmp_path / "model"
    (model_dir / "code").mkdir(parents=True)
    (model_dir / "code" / "inference.py").write_text(textwrap.dedent(SLOW_LOADING_HANDLERS))
    handle = start_in_background(model_dir, num_threads=1, wait=False, log_path=tmp_path / "endpoint.log")
    try:
        with httpx.Client(base_url=handle.url, timeout=30) as http:
            deadline = time.monotonic() + 120
            while True:
                try:
                    status = http.get("/ping").status_code
                    break
                except httpx.TransportError:
                    assert handle.running() and time.monotonic() < deadline, handle.log_tail()
                    time.sleep(0.1)
            assert status == 503
            early = http.post("/invocations", content=b"[[1, 2]]", headers={"Content-Type": "application/json"})
            assert early.status_code == 503 and "loading" in early.json()["error"]
            (model_dir / "go").touch()
            while http.get("/ping").status_code != 200:
                assert handle.running() and time.monotonic() < deadline, handle.log_tail()
                time.sleep(0.1)
            answer = http.post("/invocations", content=b"[[1.5, -2.0]]", headers={"Content-Type": "application/json"})
            assert answer.status_code == 200 and answer.json() == [[3.0, -4.0]]
    finally:
        handle.stop()


def test_model_archive_with_traversal_member_is_refused(tmp_path):
    archive = tmp_path / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        data = b"owned"
        info = tarfile.TarInfo("../outside.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(EndpointStartError, match="cannot extract"):
        start_in_background(archive, num_threads=1, log_path=tmp_path / "endpoint.log")
    assert not (tmp_path.parent / "outside.txt").exists()


def test_concurrent_requests_are_batched(endpoint, confident_digits):
    body = encode(Image.fromarray(confident_digits[0][0]), "PNG")
    before = httpx.get(f"{endpoint.url}/stats").json()
    statuses: list[int] = []

    def send() -> None:
        with httpx.Client(timeout=60) as http:
            for _ in range(10):
                response = http.post(f"{endpoint.url}/invocations", content=body, headers={"Content-Type": "image/png"})
                statuses.append(response.status_code)

    threads = [threading.Thread(target=send) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    after = httpx.get(f"{endpoint.url}/stats").json()
    assert statuses == [200] * 80
    assert after["images"] - before["images"] == 80
    assert after["largest_batch"] >= 2  # some requests shared a forward pass


def test_cli_serve_binds_sagemaker_port_and_stops_on_sigterm(tmp_path, confident_digits):
    """``python -m pipeline serve`` (what local mode's deploy step runs): port from SAGEMAKER_BIND_TO_PORT, the
    archive's own imgclf even though the CLI imports this checkout's, a clean exit on SIGTERM."""
    port = free_port()
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "SAGEMAKER_BIND_TO_PORT": str(port), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "pipeline", "serve", "--model",
                                    str(model_archive() / "model.tar.gz")], cwd=root, env=env, stdout=out,
                                   stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ping", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        image, label = confident_digits[0]
        response = httpx.post(f"http://127.0.0.1:{port}/invocations", content=encode(Image.fromarray(image), "PNG"),
                              headers={"Content-Type": "image/png"}, timeout=60)
        assert response.json()["predictions"][0][0]["label"] == str(label)
        assert response.json()["model_version"] is None
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    assert "Application shutdown complete" in log.read_text()
