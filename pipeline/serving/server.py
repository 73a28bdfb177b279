"""The local endpoint: SageMaker's inference container contract on uvicorn + Starlette.

Routes (https://docs.aws.amazon.com/sagemaker/latest/dg/your-algorithms-inference-code.html):

- ``GET /ping``: 200 once the model is loaded, 503 while it loads, 500 if loading failed.
- ``POST /invocations``: ``Content-Type`` and ``Accept`` go to the archive's handlers; top_k from the query
  parameter ``top_k``, header ``X-Top-K`` or CustomAttributes ``top_k=N`` (``X-Amzn-SageMaker-Custom-Attributes``).
  Errors are ``{"error": message}`` with the handlers' status (400, 406, 413, 415), 503 + Retry-After when the
  batching queue is full or the model is loading, 500 for anything unexpected. The server keeps serving after all.
- ``GET /execution-parameters``: batch transform's MaxConcurrentTransforms, BatchStrategy, MaxPayloadInMB.

The model archive is loaded through its own ``code/inference.py`` (:mod:`pipeline.serving.handlers`) on a
background thread after the server starts listening, so ``/ping`` answers 503 meanwhile, as SageMaker expects.
``input_fn`` and ``output_fn`` run in Starlette's thread pool; ``predict_fn`` runs on one inference thread with
dynamic batching (:mod:`pipeline.serving.batching`).

Two ways to run it, one code path (:func:`serve`): ``python -m pipeline serve --model PATH`` in the foreground, and
:func:`start_in_background` (a child process running ``python -m pipeline.serving.server``) for the local
executor's deploy step, ``run-local --demo``, the stage endpoints, the tests and the benchmark. A child process
rather than a thread: the archive's ``imgclf`` package must not mix with this checkout's, torch's thread settings
are per process, and ``stop()`` can always end it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pipeline.serving.batching import DynamicBatcher, QueueFullError
from pipeline.serving.handlers import (
    DEFAULT_ACCEPT_ENV,
    UTF8_TYPES,
    Handlers,
    RequestContext,
    load_handlers,
    prepare_model_dir,
)
from pipeline.serving.settings import (
    MAX_BATCH_SIZE,
    MAX_DELAY_MS,
    MAX_QUEUE_SIZE,
    EndpointConfig,
    add_endpoint_arguments,
    config_from_args,
    default_num_threads,
)

logger = logging.getLogger("pipeline.serving")

#: SageMaker's real-time InvokeEndpoint payload limit (6 MB); the same value as imgclf.serving.MAX_PAYLOAD_BYTES.
MAX_PAYLOAD_BYTES = 6 * 1024 * 1024
#: Bodies up to this size are read and dropped before answering 413, so the client reads the answer rather than a
#: reset connection; beyond it the connection is closed.
_DRAIN_LIMIT_BYTES = 64 * 1024 * 1024
DEFAULT_PORT = 8080
PORT_ENV = "SAGEMAKER_BIND_TO_PORT"
RETRY_AFTER_S = "1"
#: Read by the archive's model_fn (imgclf.serving.MODEL_VERSION_ENV) to echo the model package version.
MODEL_VERSION_ENV = "IMGCLF_MODEL_PACKAGE_VERSION"


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _status_of(error: BaseException) -> tuple[int, str] | None:
    """``(status, message)`` of a handler error that carries one (RequestError, the toolkit's errors), else None."""
    status = getattr(error, "status_code", None)
    if isinstance(status, int) and 400 <= status <= 599:
        return status, str(getattr(error, "message", None) or error)
    return None


class Endpoint:
    """The model and its handlers, loaded once; the state behind the routes."""

    def __init__(self, config: EndpointConfig):
        self.config = config
        self.state = "loading"  # -> "ready" | "failed"
        self.error: str | None = None
        self.handlers: Handlers | None = None
        self.model = None
        self.batcher: DynamicBatcher | None = None
        self.on_failure = None  # called after a failed load (the CLI stops the server)
        self._scratch = tempfile.TemporaryDirectory(prefix="endpoint-model-")

    def _load(self) -> None:
        # The archive first: a wrong path or checksum fails before the slow torch import.
        model_dir = prepare_model_dir(self.config.model, Path(self._scratch.name), self.config.sha256)
        import torch

        torch.set_num_threads(self.config.num_threads)
        with contextlib.suppress(RuntimeError):  # only settable before the first parallel op
            torch.set_num_interop_threads(1)
        if self.config.model_version:
            os.environ[MODEL_VERSION_ENV] = self.config.model_version
        self.handlers = load_handlers(model_dir)
        context = RequestContext(str(model_dir), gpu_id=0 if torch.cuda.is_available() else None)
        self.model = self.handlers.call(self.handlers.model_fn, str(model_dir), context=context)
        logger.info("model %s loaded from %s (%d torch threads)", self.config.model, model_dir,
                    self.config.num_threads)

    def _predict(self, data):
        return self.handlers.call(self.handlers.predict_fn, data, self.model)

    async def start(self) -> None:
        """Load the model on a worker thread, then start batching. A failure sets state ``failed``."""
        import torch

        try:
            if self.handlers is None:  # not loaded before the server started (serve(on_loaded=...))
                await asyncio.to_thread(self._load)
        except Exception as error:
            self.state, self.error = "failed", f"{type(error).__name__}: {error}"
            logger.error("the model failed to load: %s", self.error)
            if self.on_failure:
                self.on_failure()
            return
        threads = self.config.num_threads
        self.batcher = DynamicBatcher(self._predict, max_batch_size=self.config.max_batch_size,
                                      max_delay_s=self.config.max_delay_ms / 1000,
                                      max_queue_size=self.config.max_queue_size,
                                      initializer=lambda: torch.set_num_threads(threads))
        self.batcher.start()
        self.state = "ready"

    async def stop(self) -> None:
        if self.batcher is not None:
            await self.batcher.stop()
        self._scratch.cleanup()

    # -- routes ------------------------------------------------------------------------------------------------
    async def ping(self, request: Request) -> Response:
        if self.state == "ready":
            return JSONResponse({"status": "healthy"})
        if self.state == "failed":
            return _error(500, f"the model failed to load: {self.error}")
        return JSONResponse({"status": "loading"}, status_code=503, headers={"Retry-After": RETRY_AFTER_S})

    async def execution_parameters(self, request: Request) -> Response:
        # Image files cannot be concatenated into one body, so batch transform sends one record per request.
        return JSONResponse({"MaxConcurrentTransforms": self.config.max_concurrent_transforms,
                             "BatchStrategy": "SINGLE_RECORD", "MaxPayloadInMB": MAX_PAYLOAD_BYTES // (1024 * 1024)})

    async def _read_body(self, request: Request) -> bytes | Response:
        declared = request.headers.get("content-length")
        too_large = _error(413, f"payload is over SageMaker's real-time limit of {MAX_PAYLOAD_BYTES} bytes (6 MB): "
                                "send fewer or smaller images")
        if declared and declared.isdigit() and int(declared) > _DRAIN_LIMIT_BYTES:
            too_large.headers["Connection"] = "close"
            return too_large
        body, total = bytearray(), 0
        async for chunk in request.stream():
            total += len(chunk)
            if total <= MAX_PAYLOAD_BYTES:
                body += chunk
            elif total > _DRAIN_LIMIT_BYTES:
                too_large.headers["Connection"] = "close"
                return too_large
        return too_large if total > MAX_PAYLOAD_BYTES else bytes(body)

    async def invocations(self, request: Request) -> Response:
        if self.state != "ready":
            if self.state == "failed":
                return _error(500, f"the model failed to load: {self.error}")
            return _error(503, "the model is still loading: retry once /ping answers 200",
                          {"Retry-After": RETRY_AFTER_S})
        body = await self._read_body(request)
        if isinstance(body, Response):
            return body
        content_type = request.headers.get("content-type")
        accept = request.headers.get("accept")
        if not accept or accept.strip() == "*/*":  # the toolkit's rule
            accept = os.environ.get(DEFAULT_ACCEPT_ENV, "application/json")
        headers = dict(request.headers)
        if "top_k" in request.query_params:  # the query parameter wins over headers
            headers["x-top-k"] = request.query_params["top_k"]
        context = RequestContext(str(self.handlers.model_dir), headers)
        data: bytes | str = body
        if content_type in UTF8_TYPES:
            try:
                data = body.decode("utf-8")
            except UnicodeDecodeError as error:
                return _error(400, f"{content_type} body is not UTF-8 text: {error}")
        try:
            result = await self._transform(data, content_type, accept, context)
        except QueueFullError as error:
            return _error(503, f"the endpoint is busy ({error}): retry after {RETRY_AFTER_S} s",
                          {"Retry-After": RETRY_AFTER_S})
        except Exception as error:
            known = _status_of(error)
            if known:
                logger.info("%s %s: %s", request.method, request.url.path, f"{known[0]} {known[1]}")
                return _error(*known)
            logger.exception("unexpected error in /invocations")
            return _error(500, f"internal error: {type(error).__name__}: {error}")
        response_type = accept
        if isinstance(result, tuple):
            result, response_type = result[0], result[1]
        if isinstance(result, str):
            result = result.encode("utf-8")
        return Response(bytes(result), media_type=response_type)

    async def _transform(self, data, content_type, accept, context):
        h = self.handlers
        if h.transform_fn is not None:  # cannot be batched: the whole request runs on the inference thread
            return await self.batcher.run_in_worker(
                lambda: h.call(h.transform_fn, self.model, data, content_type, accept, context=context))
        with self.batcher.arriving():
            batch = await asyncio.to_thread(h.call, h.input_fn, data, content_type, context=context)
        prediction = await self.batcher.submit(batch)
        return await asyncio.to_thread(h.call, h.output_fn, prediction, accept, context=context)

    async def stats(self, request: Request) -> Response:
        """Batching counters (not a SageMaker route; for the load tool and debugging)."""
        return JSONResponse({"state": self.state, **(self.batcher.stats.as_dict() if self.batcher else {})})


def create_app(config: EndpointConfig) -> tuple[Starlette, Endpoint]:
    """Return the ASGI app and its :class:`Endpoint`. The model loads when the app's lifespan starts."""
    endpoint = Endpoint(config)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        task = asyncio.create_task(endpoint.start())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await endpoint.stop()

    async def http_error(request: Request, error: HTTPException) -> Response:
        return _error(error.status_code, f"{error.detail}: {request.method} {request.url.path} (routes: GET /ping, "
                                         "POST /invocations, GET /execution-parameters)")

    routes = [
        Route("/ping", endpoint.ping, methods=["GET"]),
        Route("/invocations", endpoint.invocations, methods=["POST"]),
        Route("/execution-parameters", endpoint.execution_parameters, methods=["GET"]),
        Route("/stats", endpoint.stats, methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error})
    return app, endpoint


def resolve_port(port: int | None) -> int:
    """``port`` when given, else ``SAGEMAKER_BIND_TO_PORT`` (set by SageMaker for multi-container endpoints), else
    8080 (SageMaker's default)."""
    if port is not None:
        return port
    value = os.environ.get(PORT_ENV)
    return int(value) if value and value.isdigit() else DEFAULT_PORT


class ModelLoadError(RuntimeError):
    """The endpoint started but its model failed to load."""


def serve(config: EndpointConfig, host: str = "127.0.0.1", port: int | None = None, parent_pid: int | None = None,
          log_level: str = "info", on_loaded: Callable[[], None] | None = None) -> None:
    """Run the endpoint in the foreground until SIGINT/SIGTERM (uvicorn shuts down gracefully).

    Args:
        parent_pid: exit when this process is gone (a background endpoint never outlives its starter).
        on_loaded: given, the model loads before the server starts and this is called once it has (the CLI
            announces the endpoint there), so a model that does not load is one ModelLoadError and nothing listens.

    Raises:
        ModelLoadError: the model failed to load (the server stops at once rather than answering 500 forever).
    """
    app, endpoint = create_app(config)
    if on_loaded is not None:
        try:
            endpoint._load()
        except Exception as error:
            raise ModelLoadError(f"the model failed to load: {type(error).__name__}: {error}") from error
        on_loaded()
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=resolve_port(port), log_level=log_level,
                                           access_log=False, timeout_graceful_shutdown=10))

    def stop() -> None:
        server.should_exit = True

    endpoint.on_failure = stop
    if parent_pid:
        def watch_parent() -> None:
            while not server.should_exit:
                if os.getppid() != parent_pid:
                    logger.warning("parent process %d is gone: stopping the endpoint", parent_pid)
                    stop()
                time.sleep(1.0)

        threading.Thread(target=watch_parent, daemon=True, name="parent-watch").start()
    server.run()
    if endpoint.state == "failed":
        raise ModelLoadError(f"the model failed to load: {endpoint.error}")


# -- background endpoints ------------------------------------------------------------------------------------------

#: Seconds a background endpoint may take to answer /ping 200: torch's import and the model's load on a busy
#: 2-core machine.
STARTUP_TIMEOUT_S = 180.0
#: Seconds between SIGTERM and SIGKILL: more than uvicorn's graceful shutdown (``timeout_graceful_shutdown`` above).
STOP_TIMEOUT_S = 15.0


class EndpointStartError(RuntimeError):
    """A background endpoint exited or did not become healthy in time. The message's first line says why and names
    the log; the lines after it are the log's tail."""


@dataclass
class EndpointHandle:
    """A running background endpoint. ``url`` is ``http://host:port``; ``stop()`` ends it (also on ``with`` exit)."""

    url: str
    process: subprocess.Popen
    log_path: Path

    def wait_until_healthy(self, timeout_s: float = STARTUP_TIMEOUT_S) -> EndpointHandle:
        """Block until ``/ping`` answers 200; returns ``self``.

        Raises:
            EndpointStartError: the process exited, or ``/ping`` did not answer 200 within ``timeout_s`` (the
                endpoint is stopped then).
        """
        import httpx

        deadline = time.monotonic() + timeout_s
        with httpx.Client(timeout=2.0) as client:
            while True:
                if self.process.poll() is not None:
                    tail = self.log_tail()
                    cause = tail.splitlines()[-1] if tail else "no output"
                    raise EndpointStartError(f"the endpoint exited with code {self.process.returncode} before it was "
                                             f"healthy: {cause} (log: {self.log_path})\n{tail}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{self.url}/ping").status_code == 200:
                        return self
                if time.monotonic() > deadline:
                    self.stop()
                    raise EndpointStartError(f"the endpoint was not healthy within {timeout_s:.0f} s (log: "
                                             f"{self.log_path})\n{self.log_tail()}")
                time.sleep(0.1)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM the endpoint's process group (graceful: in-flight requests finish), then SIGKILL after
        ``timeout_s``. Returns the exit code."""
        if self.process.poll() is None:
            # the child leads its own session (start_new_session), so its group is its pid and holds nothing else
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return self.process.returncode

    def running(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> EndpointHandle:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (another process could still take it before it is bound)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def _server_args(config: EndpointConfig) -> list[str]:
    args = ["--model", str(config.model), "--num-threads", str(config.num_threads),
            "--max-batch-size", str(config.max_batch_size), "--max-delay-ms", str(config.max_delay_ms),
            "--max-queue-size", str(config.max_queue_size)]
    if config.sha256:
        args += ["--sha256", config.sha256]
    if config.model_version:
        args += ["--model-version", config.model_version]
    return args


def start_in_background(model_path: str | os.PathLike, host: str = "127.0.0.1", port: int = 0,
                        sha256: str | None = None, *, model_version: str | None = None, num_threads: int | None = None,
                        max_batch_size: int = MAX_BATCH_SIZE, max_delay_ms: float = MAX_DELAY_MS,
                        max_queue_size: int = MAX_QUEUE_SIZE, log_path: str | os.PathLike | None = None,
                        startup_timeout_s: float = STARTUP_TIMEOUT_S, wait: bool = True) -> EndpointHandle:
    """Start an endpoint for ``model_path`` (model.tar.gz or an extracted folder) in a child process: the one way
    this project starts an endpoint in the background (the deploy step, ``run-local --demo``, the stage endpoints'
    variants, tests and the benchmark).

    The child runs ``python -m pipeline.serving.server`` in its own session, ends itself when this process is gone,
    and writes stdout+stderr to ``log_path``.

    Args:
        port: 0 picks a free port.
        sha256: hex SHA-256 the archive must have (e.g. the model package's); checked before extraction.
        model_version: echoed as ``model_version`` in every response.
        num_threads: torch threads of the endpoint (default: :func:`default_num_threads`).
        max_batch_size, max_delay_ms, max_queue_size: dynamic batching (:class:`EndpointConfig`).
        log_path: the endpoint's stdout+stderr, appended to (default: a temporary file).
        wait: block until ``/ping`` answers 200 (:meth:`EndpointHandle.wait_until_healthy`); else return at once
            (``/ping`` answers 503 while the model loads).

    Returns:
        An :class:`EndpointHandle` (``.url``, ``.stop()``; a context manager).

    Raises:
        EndpointStartError: the endpoint exited (e.g. bad archive, checksum mismatch) or was not healthy within
            ``startup_timeout_s``; the message names the log and holds its tail.
    """
    port = port or free_port(host)
    config = EndpointConfig(model=str(Path(model_path).resolve()), sha256=sha256, model_version=model_version,
                            num_threads=num_threads or default_num_threads(), max_batch_size=max_batch_size,
                            max_delay_ms=max_delay_ms, max_queue_size=max_queue_size)
    if log_path is None:
        log_path = Path(tempfile.mkstemp(prefix="endpoint-", suffix=".log")[1])
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    root = str(Path(__file__).resolve().parents[2])
    # OMP_NUM_THREADS too: torch.set_num_threads only sets the calling thread's OpenMP team size, and the threads
    # that run input_fn (Starlette's pool) would otherwise start teams of every CPU whose spinning workers slow
    # the forward pass (make bench row 3).
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p),
           "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(config.num_threads)}
    env.pop(PORT_ENV, None)  # the port argument decides
    command = [sys.executable, "-m", "pipeline.serving.server", "--host", host, "--port", str(port),
               "--parent-pid", str(os.getpid()), *_server_args(config)]
    with open(log_path, "ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                   cwd=root, start_new_session=True)
    url_host = f"[{host}]" if ":" in host else host
    handle = EndpointHandle(f"http://{url_host}:{port}", process, log_path)
    return handle.wait_until_healthy(startup_timeout_s) if wait else handle


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline.serving.server", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model.tar.gz or an extracted model folder")
    parser.add_argument("--sha256", help="hex SHA-256 the archive must have")
    parser.add_argument("--model-version", help="model package version echoed in responses")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=None, help=f"default: ${PORT_ENV} or {DEFAULT_PORT}")
    add_endpoint_arguments(parser)
    parser.add_argument("--parent-pid", type=int, default=None, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the background endpoint process (see :func:`start_in_background`)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config = config_from_args(args, args.model, args.sha256, args.model_version)
    try:
        serve(config, args.host, args.port, parent_pid=args.parent_pid)
    except ModelLoadError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
