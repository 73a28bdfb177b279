"""Checks and numbers for ``run-local`` before its execution starts: the ``--data`` folder's layout, and how long
the run will take on this machine, from a few training steps timed here.

Both run in the ``run-local`` process, in seconds, so that a wrong folder or a run of hours is known before split
and tuning start.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import UserError

#: Training steps timed (after one warm-up step) and images per step for the estimate.
TIMED_STEPS = 2
TIMED_BATCH = 32
#: A validation pass costs about a third of a training pass per image (forward only, no backward).
VALIDATION_COST = 1 / 3


def check_image_folder(folder: Path) -> dict[str, int]:
    """``{class folder: image files}`` of ``folder``, an ImageFolder tree (``folder/<class>/<image>``).

    The same rules as split.py (imgclf/data.py): class folders are the non-hidden folders directly under
    ``folder``, images are the non-hidden files below them with an image suffix. Files are not decoded here (split.py
    rejects unreadable ones, listed in the report's data section).

    Raises:
        UserError: ``folder`` is not a folder, is empty, holds images but no class folders, or has fewer than two
            class folders with images; the message names ``folder`` and the layout it needs.
    """
    from imgclf import data

    layout = f"one sub-folder per class holding its images ({folder}/<class>/<image>)"
    if not folder.is_dir():
        raise UserError(f"--data {folder}: not a folder (make one with: python -m pipeline sample-data --out {folder})")
    counts = {
        name: sum(1 for path in data.iter_class_files(folder / name) if data.has_image_suffix(path))
        for name in data.list_classes(folder)
    }
    loose = [p for p in folder.iterdir() if p.is_file() and not data.is_hidden(p) and data.has_image_suffix(p)]
    with_images = {name: count for name, count in counts.items() if count}
    if not counts and not loose:
        raise UserError(f"--data {folder}: the folder is empty; it needs {layout}")
    if not counts:
        raise UserError(f"--data {folder}: {len(loose)} image(s) but no class folder; put them in {layout}")
    if len(with_images) < 2:
        found = ", ".join(f"{name} ({count})" for name, count in counts.items())
        raise UserError(f"--data {folder}: a classifier needs at least 2 class folders with images, found "
                        f"{len(with_images)} among: {found}; it needs {layout}")  # fmt: skip
    return counts


@dataclass(frozen=True)
class RunEstimate:
    """How long the training of one local run should take: ``seconds`` in all, from ``image_seconds`` per training
    image measured here (model ``model`` at ``image_size`` px, batch :data:`TIMED_BATCH`) times ``epoch_images``
    (training images times epochs, over every tuning trial and the final train job)."""

    model: str
    weights: str
    image_size: int
    image_seconds: float
    epoch_images: int
    seconds: float


def estimate_run(config, images: int, threads: int) -> RunEstimate:
    """Time :data:`TIMED_STEPS` training steps of ``config.training.model`` at its ``image_size`` on random images
    (fp32, ``threads`` torch threads; weights do not change the cost), and scale to the whole run.

    Epochs per job: the middle of ``tuning.ranges.epochs`` (an integer range or categorical values), else train.py's
    default of 4; jobs: ``tuning.max_jobs`` trials plus the train step. Validation passes add
    :data:`VALIDATION_COST` of a training pass per validation image. Split, debug and evaluate are not counted.
    """
    import torch

    from imgclf.models import build_model

    size = config.training.image_size
    model = build_model(config.training.model, 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    batch = torch.rand(TIMED_BATCH, 3, size, size)
    labels = torch.randint(0, 10, (TIMED_BATCH,))
    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        durations = []
        for _ in range(TIMED_STEPS + 1):
            began = time.perf_counter()
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(batch), labels).backward()
            optimizer.step()
            durations.append(time.perf_counter() - began)
    finally:
        torch.set_num_threads(previous)
    image_seconds = min(durations[1:]) / TIMED_BATCH
    epochs = _middle_epochs(config)
    split = config.split
    per_job = images * epochs * (split.train_fraction + split.validation_fraction * VALIDATION_COST)
    jobs = config.tuning.max_jobs + 1
    epoch_images = round(images * split.train_fraction * epochs * jobs)
    return RunEstimate(config.training.model, config.training.weights, size, image_seconds, epoch_images,
                       image_seconds * per_job * jobs)  # fmt: skip


def _middle_epochs(config) -> float:
    fixed = config.training.hyperparameters.get("epochs")
    if fixed is not None:
        return float(fixed)
    spec = config.tuning.ranges.get("epochs")
    if spec is None:
        return 4.0  # train.py's default
    if spec.type == "categorical":
        values = [float(v) for v in spec.values]
        return sum(values) / len(values)
    return (spec.min + spec.max) / 2


def describe(estimate: RunEstimate) -> str:
    """One line for the log: size, model, weights and the estimate, e.g. ``training resnet18 (weights none) at 28
    px: about 3 min of training on this machine (1.2 ms per training image, 45,000 image-epochs)``."""
    minutes = estimate.seconds / 60
    took = f"{minutes:.0f} min" if minutes >= 1 else f"{estimate.seconds:.0f} s"
    return (f"training {estimate.model} (weights {estimate.weights}) at {estimate.image_size} px "
            f"(training.image_size): about {took} of training on this machine, measured here at "
            f"{estimate.image_seconds * 1000:.1f} ms per training image for {estimate.epoch_images:,} image-epochs")
