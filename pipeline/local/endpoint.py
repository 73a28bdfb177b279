"""A local endpoint process: ``python -m pipeline serve --model <model.tar.gz> --port <port>`` (the serving issue's
server, SageMaker's contract: ``GET /ping``, ``POST /invocations``), started and stopped by local mode.

The server runs as a subprocess of the current interpreter so a crash or a slow model load never takes the
executor down; readiness is ``GET /ping`` answering 200 (the server answers 200 only once the model is loaded).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from pipeline._entrypoints import ENTRYPOINTS_DIR

#: Seconds to wait for /ping to answer 200 (loading torch and the model on a busy 2-core machine).
READY_TIMEOUT_SECONDS = 180
ROOT = ENTRYPOINTS_DIR.parent


class EndpointError(Exception):
    """The endpoint did not start or answer; the message points at its log."""


def server_available() -> bool:
    """True if this checkout has the ``serve`` command (pipeline/commands/serving.py)."""
    return importlib.util.find_spec("pipeline.commands.serving") is not None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalEndpoint:
    """A running ``serve`` process on ``127.0.0.1:<port>`` for ``model_path``; use as a context manager.

    ``sha256`` (hex): the server refuses an archive with another digest (the one the registry recorded).
    ``model_version``: echoed by the server in each response (the model package ARN).
    """

    def __init__(
        self,
        model_path: Path,
        log_path: Path,
        port: int | None = None,
        sha256: str | None = None,
        model_version: str | None = None,
    ):
        self.model_path, self.log_path = Path(model_path), Path(log_path)
        self.port = port or free_port()
        self.sha256, self.model_version = sha256, model_version
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        command = [
            sys.executable,
            "-m",
            "pipeline",
            "serve",
            "--model",
            str(self.model_path),
            "--port",
            str(self.port),
        ]
        if self.sha256:
            command += ["--sha256", self.sha256]
        if self.model_version:
            command += ["--model-version", self.model_version]
        return command

    def start(self, timeout: float = READY_TIMEOUT_SECONDS) -> LocalEndpoint:
        """Start the server and wait until ``/ping`` answers 200.

        Raises:
            EndpointError: the process exited, or /ping did not answer 200 within ``timeout`` seconds.
        """
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "w", encoding="utf-8")  # noqa: SIM115 - owned by the process
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "SAGEMAKER_SUPPRESS_V2_WARNING": "1"}
        self.process = subprocess.Popen(
            self.command(),
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self.log_path.read_text(errors="replace").strip().splitlines()[-3:]
                raise EndpointError(
                    f"the endpoint exited with code {self.process.returncode}: {' | '.join(tail)} "
                    f"(log: {self.log_path})"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/ping", timeout=2).status_code == 200:
                    return self
            time.sleep(0.3)
        self.stop()
        raise EndpointError(f"the endpoint did not answer /ping within {timeout:.0f} s (log: {self.log_path})")

    def stop(self) -> None:
        """SIGTERM the server's process group (SIGKILL after 10 s)."""
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def __enter__(self) -> LocalEndpoint:
        return self.start() if self.process is None else self

    def __exit__(self, *exc) -> None:
        self.stop()
