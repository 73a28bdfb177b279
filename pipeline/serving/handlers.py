"""Open a model archive and load its serving handlers the way the AWS PyTorch inference container does.

The container (sagemaker-pytorch-inference-toolkit on TorchServe) puts the archive's ``code/`` folder on
``sys.path``, imports ``code/inference.py`` as the user module, takes ``model_fn``, ``input_fn``, ``predict_fn``,
``output_fn`` (or a ``transform_fn``) from it, falls back to its default handlers for any that are missing, and
passes the request ``context`` to a handler whose signature has one more parameter than the toolkit's arguments.
:func:`load_handlers` does the same, so ``python -m pipeline serve`` runs exactly the code AWS would run.
"""

from __future__ import annotations

import importlib.util
import inspect
import io
import json
import logging
import os
import sys
import tarfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from pipeline.hashing import sha256_of

logger = logging.getLogger(__name__)

#: Content types the toolkit decodes to ``str`` before ``input_fn`` (sagemaker_inference.content_types.UTF8_TYPES).
UTF8_TYPES = ("application/json", "text/csv")
#: The toolkit's default response type for a missing or ``*/*`` Accept (env SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT).
DEFAULT_ACCEPT_ENV = "SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT"


class ModelArchiveError(ValueError):
    """The model path, archive or checksum cannot be used; the message says why and what to do."""


class HandlerError(Exception):
    """An error of the default handlers with an HTTP status (same attributes as the toolkit's errors)."""

    def __init__(self, status_code: int, message: str):
        super().__init__(message)
        self.status_code, self.message = status_code, message


def prepare_model_dir(model: str | os.PathLike, scratch: Path, sha256: str | None = None) -> Path:
    """Return an extracted model directory for ``model``: a ``model.tar.gz``, a folder holding one, or an extracted
    folder (with ``model.pth`` or ``code/``).

    Archives are checked against ``sha256`` (hex, when given) before extraction, and extracted into ``scratch`` with
    tarfile's ``data`` filter (PEP 706: no absolute paths, ``..``, links out of the folder or device files).

    Raises:
        ModelArchiveError: missing path, not a gzip tar, checksum mismatch, unsafe member, or a checksum given for
            an extracted folder (which has no single file to check).
    """
    path = Path(model).expanduser()
    if not path.exists():
        raise ModelArchiveError(f"model {path} does not exist: give a model.tar.gz or an extracted model folder")
    if path.is_dir():
        if (path / "model.pth").is_file() or (path / "code").is_dir():
            if sha256:
                raise ModelArchiveError(f"a SHA-256 was given but {path} is an extracted folder: give the "
                                        "model.tar.gz the checksum belongs to")
            return path
        archives = sorted(path.glob("*.tar.gz"))
        if len(archives) != 1:
            raise ModelArchiveError(f"{path} holds neither model.pth nor exactly one .tar.gz archive: give the "
                                    "training job's model artifacts")
        path = archives[0]
    if sha256:
        actual = sha256_of(path)
        if actual.lower() != sha256.strip().lower():
            raise ModelArchiveError(f"SHA-256 of {path} is {actual}, expected {sha256.strip()}: the archive changed "
                                    "after it was registered; re-register or deploy the registered one")
    if not tarfile.is_tarfile(path):
        raise ModelArchiveError(f"{path} is not a tar archive: give model.tar.gz as written by the training job")
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(path) as archive:
            archive.extractall(scratch, filter="data")
    except (tarfile.TarError, OSError, EOFError) as error:
        raise ModelArchiveError(f"cannot extract {path}: {error}") from error
    return scratch


# -- default handlers (sagemaker-pytorch-inference-toolkit's DefaultPytorchInferenceHandler) ------------------


def default_model_fn(model_dir):
    """Load a TorchScript model: ``model.pt``, else the only ``.pt``/``.pth`` file in ``model_dir``."""
    import torch

    folder = Path(model_dir)
    path = folder / "model.pt"
    if not path.is_file():
        candidates = sorted(p for p in folder.iterdir() if p.suffix in (".pt", ".pth") and p.is_file())
        if len(candidates) != 1:
            raise ModelArchiveError(f"no code/inference.py with a model_fn, and the default model_fn needs exactly "
                                    f"one TorchScript .pt/.pth file in {folder}, found {[p.name for p in candidates]}")
        path = candidates[0]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.jit.load(str(path), map_location=device).eval()


def default_input_fn(input_data, content_type):
    """JSON (nested lists), CSV or npy -> float tensor, as the toolkit's default does."""
    import numpy as np
    import torch

    kind = (content_type or "").split(";", 1)[0].strip().lower()
    try:
        if kind == "application/json":
            return torch.tensor(json.loads(input_data), dtype=torch.float32)
        if kind == "text/csv":
            text = input_data if isinstance(input_data, str) else input_data.decode("utf-8")
            return torch.from_numpy(np.loadtxt(io.StringIO(text), delimiter=",", ndmin=2).astype(np.float32))
        if kind == "application/x-npy":
            return torch.from_numpy(np.load(io.BytesIO(input_data), allow_pickle=False))
    except (ValueError, TypeError, OSError, EOFError) as error:
        raise HandlerError(400, f"cannot decode the {kind} body: {error}") from error
    raise HandlerError(415, f"unsupported Content-Type {content_type!r}: the default handlers read "
                            "application/json, text/csv and application/x-npy")


def default_predict_fn(data, model):
    """``model(data)`` without gradients."""
    import torch

    with torch.inference_mode():
        return model(data)


def default_output_fn(prediction, accept):
    """A tensor or list -> JSON, CSV or npy, the first of ``accept``'s types that is one of them."""
    import numpy as np
    import torch

    if isinstance(prediction, torch.Tensor):
        prediction = prediction.detach().cpu().numpy()
    for item in (accept or "application/json").split(","):
        kind = item.split(";", 1)[0].strip().lower()
        if kind in ("application/json", "*/*"):
            return json.dumps(np.asarray(prediction).tolist()), "application/json"
        if kind == "text/csv":
            buffer = io.StringIO()
            np.savetxt(buffer, np.atleast_2d(np.asarray(prediction)), delimiter=",")
            return buffer.getvalue(), "text/csv"
        if kind == "application/x-npy":
            buffer = io.BytesIO()
            np.save(buffer, np.asarray(prediction), allow_pickle=False)
            return buffer.getvalue(), "application/x-npy"
    raise HandlerError(406, f"cannot answer with Accept {accept!r}: use application/json, text/csv or "
                            "application/x-npy")


# -- the request context the toolkit passes -----------------------------------------------------------------------


class _RequestProcessor:
    def __init__(self, headers: Mapping[str, str]):
        self._headers = dict(headers)

    def get_request_properties(self) -> dict:
        return self._headers


class RequestContext:
    """The parts of TorchServe's ``Context`` that SageMaker handlers read: ``system_properties`` (``model_dir``,
    ``gpu_id``) and ``request_processor[0].get_request_properties()`` (the request headers)."""

    def __init__(self, model_dir: str, headers: Mapping[str, str] | None = None, gpu_id: int | None = None):
        self.system_properties = {"model_dir": model_dir, "gpu_id": gpu_id}
        self.request_processor = [_RequestProcessor(headers or {})]


@dataclass
class Handlers:
    """The serving handlers of one model archive, with the toolkit's rule for passing ``context``."""

    model_dir: Path
    model_fn: Callable
    input_fn: Callable
    predict_fn: Callable
    output_fn: Callable
    transform_fn: Callable | None
    module_path: Path | None

    def call(self, function: Callable, *args, context: RequestContext | None = None):
        """Call ``function(*args)``, or ``function(*args, context)`` when its signature takes one more parameter
        (sagemaker_inference.transformer.Transformer._run_handler_function).

        Raises:
            TypeError: a handler whose parameter count fits neither.
        """
        count = len(inspect.signature(function).parameters)
        if count == len(args):
            return function(*args)
        if count == len(args) + 1:
            return function(*args, context)
        raise TypeError(f"{function.__name__} takes {count} arguments but the serving contract gives {len(args)}")


def _forget_shadowed_modules(code_dir: Path) -> None:
    """Drop already-imported modules that ``code/`` also provides (e.g. ``imgclf`` from this checkout's
    ``entrypoints/``), so the archive's own copies are imported, as in the container where only they exist."""
    names = {p.stem for p in code_dir.glob("*.py")}
    names |= {p.name for p in code_dir.iterdir() if (p / "__init__.py").is_file()}
    for name in list(sys.modules):
        if name.split(".", 1)[0] not in names:
            continue
        file = getattr(sys.modules[name], "__file__", None)
        if file is None or not Path(file).resolve().is_relative_to(code_dir.resolve()):
            del sys.modules[name]


def load_handlers(model_dir: Path, program: str | None = None) -> Handlers:
    """Import the archive's ``code/<program>`` (default ``SAGEMAKER_PROGRAM`` or ``inference.py``) with ``code/`` on
    ``sys.path`` and return its handlers, the toolkit's defaults standing in for missing ones.

    Raises:
        ModelArchiveError: a ``transform_fn`` together with input/predict/output handlers (the toolkit refuses it).
        Exception: whatever importing the user module raises.
    """
    model_dir = Path(model_dir)
    code_dir = model_dir / "code"
    program = program or os.environ.get("SAGEMAKER_PROGRAM") or "inference.py"
    module_path = code_dir / program
    module = None
    if module_path.is_file():
        _forget_shadowed_modules(code_dir)
        if str(code_dir) not in sys.path:
            sys.path.insert(0, str(code_dir))
        name = Path(program).stem
        spec = importlib.util.spec_from_file_location(name, module_path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    else:
        logger.warning("no %s in the archive: using the default handlers (TorchScript model.pt)", module_path)
    functions = {name: getattr(module, name, None) for name in
                 ("model_fn", "input_fn", "predict_fn", "output_fn", "transform_fn")}
    if functions["transform_fn"] and any(functions[n] for n in ("input_fn", "predict_fn", "output_fn")):
        raise ModelArchiveError(f"{module_path} defines transform_fn together with input_fn/predict_fn/output_fn: "
                                "keep one or the other (the SageMaker toolkit refuses both)")
    return Handlers(
        model_dir=model_dir,
        model_fn=functions["model_fn"] or default_model_fn,
        input_fn=functions["input_fn"] or default_input_fn,
        predict_fn=functions["predict_fn"] or default_predict_fn,
        output_fn=functions["output_fn"] or default_output_fn,
        transform_fn=functions["transform_fn"],
        module_path=module_path if module is not None else None,
    )
