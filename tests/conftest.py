"""Shared fixtures: small slices of the bundled real MNIST digits, written as ImageFolder trees."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ENTRYPOINTS = ROOT / "entrypoints"

os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
if str(ENTRYPOINTS) not in sys.path:
    sys.path.insert(0, str(ENTRYPOINTS))
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def run_script(script: str, *args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``entrypoints/<script>`` as the container would: a subprocess with entrypoints/ as the working folder."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    result = subprocess.run([sys.executable, str(ENTRYPOINTS / script), *args], cwd=ENTRYPOINTS, env=full_env,
                            capture_output=True, text=True, timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(f"{script} exited {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    return result


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory) -> Path:
    """60 real MNIST digits per class (600 PNGs, 28x28) in ImageFolder layout."""
    from pipeline.sample_data import write_digits

    out = tmp_path_factory.mktemp("digits")
    write_digits(out, per_class=60)
    return out


@pytest.fixture(scope="session")
def digits_split(digits_dir, tmp_path_factory) -> Path:
    """The digits split by split.py into train/validation/test/manifest folders (fractions 0.7/0.15/0.15)."""
    out = tmp_path_factory.mktemp("split")
    run_script("split.py", "--input-dir", str(digits_dir), "--train-dir", str(out / "train"),
               "--validation-dir", str(out / "validation"), "--test-dir", str(out / "test"),
               "--manifest-dir", str(out / "manifest"), "--train-fraction", "0.7",
               "--validation-fraction", "0.15", "--test-fraction", "0.15")
    return out


@pytest.fixture(scope="session")
def trained_model(digits_split, tmp_path_factory) -> Path:
    """A resnet18 trained 4 epochs at 28 px on the split digits; returns the job folder (model/, output/, ckpt/)."""
    job = tmp_path_factory.mktemp("train-job")
    run_script("train.py", "--train-dir", str(digits_split / "train"),
               "--validation-dir", str(digits_split / "validation"), "--model-dir", str(job / "model"),
               "--output-data-dir", str(job / "output"), "--checkpoint-dir", str(job / "checkpoints"),
               "--image-size", "28", "--epochs", "4", "--batch-size", "32", "--lr", "0.05",
               "--augment", "none", "--debugger", "false")
    return job


@pytest.fixture(scope="module")
def moto_server_url():
    """moto's ThreadedMotoServer on a free loopback port, one per test module (fresh AWS state per module)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws_env(moto_server_url, monkeypatch):
    """boto3 (and the SDK) pointed at the module's moto server with test credentials; no profile, config or
    credentials file of this machine is read."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
    return moto_server_url
