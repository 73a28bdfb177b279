"""``predict``, ``load`` and ``serve`` command lines: SageMaker endpoints through moto, and every user error."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import httpx
import pytest
from PIL import Image

from pipeline.cli import main
from pipeline.serving.server import free_port

NO_CREDENTIALS = {"AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/credentials", "AWS_CONFIG_FILE": "/nonexistent/config",
                  "AWS_EC2_METADATA_DISABLED": "true", "AWS_DEFAULT_REGION": "us-east-1"}
CREDENTIAL_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                        "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN")


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "digit.png"
    Image.new("L", (28, 28), 0).save(path)
    return path


def test_predict_on_sagemaker_without_credentials_says_how_to_fix_it(monkeypatch, capsys, image):
    for name in CREDENTIAL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in NO_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing may leave this machine
    assert main(["predict", str(image), "--endpoint-name", "image-classifier"]) == 2
    error = capsys.readouterr().err
    assert "no AWS credentials found" in error and "aws configure" in error


@pytest.fixture
def moto_server(monkeypatch):
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    for name, value in {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
                        "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                        "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(name, value)
    yield f"http://{host}:{port}"
    server.stop()


def test_predict_on_sagemaker_prints_the_endpoint_answer(moto_server, capsys, image):
    answer = {"predictions": [[{"label": "seven", "probability": 0.875}, {"label": "one", "probability": 0.125}]],
              "model_version": "image-classifier/4"}
    results = {"results": [{"Body": json.dumps(answer), "ContentType": "application/json",
                            "InvokedProductionVariant": "AllTraffic", "CustomAttributes": ""}]}
    httpx.post(f"{moto_server}/moto-api/static/sagemaker/endpoint-results", json=results).raise_for_status()
    # moto reads request bodies as UTF-8 text, so the image travels as a JSON request (a form the endpoint takes)
    request = image.with_suffix(".json")
    request.write_text(json.dumps({"instances": [{"b64": base64.b64encode(image.read_bytes()).decode()}]}))
    assert main(["predict", str(request), "--endpoint-name", "image-classifier", "--top-k", "2"]) == 0
    out = capsys.readouterr().out
    assert "seven" in out and "0.8750" in out and "image-classifier/4" in out


def test_predict_json_output_and_unreachable_endpoint(capsys, image):
    port = free_port()
    assert main(["predict", str(image), "--endpoint", f"http://127.0.0.1:{port}"]) == 2
    assert "cannot reach" in capsys.readouterr().err
    assert main(["predict", str(image), "--endpoint", "ftp://example"]) == 2
    assert "not an http(s) URL" in capsys.readouterr().err
    assert main(["predict", str(image.with_name("missing.png")), "--endpoint", "http://127.0.0.1:1"]) == 2
    assert "no such image file" in capsys.readouterr().err


@pytest.mark.parametrize("arguments, words", [
    (["--concurrency", "0"], "--concurrency must be 1-256"),
    (["--requests", "0"], "--requests must be"),
    (["--duration-limit", "0"], "--duration-limit must be"),
    (["--endpoint", "not a url"], "not an http(s) URL"),
    (["--images", "/nonexistent/images"], "does not exist"),
])
def test_load_arguments_are_bounded(tmp_path, capsys, image, arguments, words):
    base = {"--endpoint": f"http://127.0.0.1:{free_port()}", "--images": str(image.parent)}
    overrides = dict(zip(arguments[::2], arguments[1::2], strict=True))
    argv = ["load"] + [x for key, value in {**base, **overrides}.items() for x in (key, value)]
    assert main(argv) == 2
    assert words in capsys.readouterr().err


def test_load_counts_connection_errors_without_crashing(capsys, image):
    """Nothing listens on the port: every request is counted under its error, the exit status says so."""
    code = main(["load", "--endpoint", f"http://127.0.0.1:{free_port()}", "--images", str(image.parent),
                 "--requests", "5", "--concurrency", "2", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 1 and report["requests"] == 5 and report["statuses"] == {"ConnectError": 5}


def test_serve_with_an_unknown_model_is_a_user_error(tmp_path, capsys):
    assert main(["serve", "--model", str(tmp_path / "missing.tar.gz"), "--store", str(tmp_path / "store")]) == 2
    assert "--model" in capsys.readouterr().err



def test_serve_resolves_a_registered_model_package(tmp_path):
    """``serve --model latest`` (or <group>/<version>, or the ARN) serves the registered archive, with its SHA-256
    to check and its ARN as the model version; an archive changed after registration is refused."""
    from pipeline.commands.serving import resolve_model
    from pipeline.errors import UserError
    from pipeline.local.registry import ModelRegistry
    from pipeline.local.store import Store

    store = Store(tmp_path / "store")
    archive = tmp_path / "model.tar.gz"
    archive.write_bytes(b"pretend archive")
    url = "s3://bucket/models/model.tar.gz"
    store.put_file(archive, url)
    registry = ModelRegistry(store)
    description = registry.create_model_package({
        "ModelPackageGroupName": "image-classifier", "ModelApprovalStatus": "Approved",
        "InferenceSpecification": {"Containers": [{"Image": "pytorch-inference", "ModelDataUrl": url}]}})
    for reference in ("latest", "image-classifier/1", description["ModelPackageArn"]):
        path, sha256, version = resolve_model(reference, tmp_path / "store", None)
        assert Path(path).read_bytes() == b"pretend archive"
        assert sha256 == hashlib.sha256(b"pretend archive").hexdigest()
        assert version == description["ModelPackageArn"]
    with pytest.raises(UserError, match="differs from the registered"):
        resolve_model("latest", tmp_path / "store", "0" * 64)
    store.path(url).write_bytes(b"tampered")
    with pytest.raises(UserError, match="SHA-256"):
        resolve_model("latest", tmp_path / "store", None)
    with pytest.raises(UserError, match="image-classifier/9"):
        resolve_model("image-classifier/9", tmp_path / "store", None)
