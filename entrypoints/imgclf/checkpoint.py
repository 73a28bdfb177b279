"""Training checkpoints that survive a kill: written atomically, resumed with every piece of training state.

SageMaker syncs ``/opt/ml/checkpoints`` to ``checkpoint_s3_uri`` while the job runs and restores it when a managed
spot job restarts, so a reclaimed instance resumes from the last finished epoch.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

CHECKPOINT_FILE = "checkpoint.pth"


def rng_state() -> dict:
    """Capture Python, NumPy and torch (CPU and CUDA) random states."""
    # Plain lists and tensors only, so the checkpoint loads with torch.load(weights_only=True).
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
        "python_gauss": random.getstate()[2],
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(cached_gaussian)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` captured."""
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    name, keys, position, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(directory: str | os.PathLike, state: dict) -> Path:
    """Write ``state`` to ``directory/checkpoint.pth`` atomically (temporary file, fsync, rename).

    A kill during the write leaves the previous checkpoint intact. Returns the checkpoint's path.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / CHECKPOINT_FILE
    with tempfile.NamedTemporaryFile(dir=directory, prefix=".checkpoint-", suffix=".tmp", delete=False) as handle:
        try:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        except BaseException:
            os.unlink(handle.name)
            raise
    os.replace(handle.name, target)
    return target


def load_checkpoint(directory: str | os.PathLike) -> dict | None:
    """Load ``directory/checkpoint.pth`` if present, else None.

    Loaded with ``weights_only=True``: a checkpoint holds tensors, numbers and lists only, so a planted file
    cannot run code.
    """
    path = Path(directory) / CHECKPOINT_FILE
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)
