"""Rows 1 and 2: our training path (``entrypoints/train.py: Training``) against a seed-style loop, and the input
pipeline against compute, on photo-like 500x375 JPEGs.

The seed-style loop is what the seed write-ups ran: ``torchvision.datasets.ImageFolder`` (PIL decoding), transforms
v1 on PIL images, a default ``DataLoader`` (no workers, no pinned memory), fp32, contiguous memory format and a
printed line per batch. Both loops use the same model (resnet18, random init), images, crop size, augmentation
geometry (RandomResizedCrop scale 0.6-1.0, train.py's ``light`` preset), batch size, optimizer and torch threads.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from bench_common import Result, interleaved, timed

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class TrainSizes:
    """Sizes of rows 1-2: crop ``image_size`` px, ``batch_size`` images, ``steps`` timed batches per repeat."""

    image_size: int = 96
    batch_size: int = 32
    steps: int = 4
    warmup_steps: int = 2
    repeats: int = 4


# -- the seed-style baseline ----------------------------------------------------------------------------------------


class SeedStyleLoop:
    """The seed write-ups' loop: PIL ImageFolder, transforms v1, default DataLoader, fp32, contiguous, prints."""

    def __init__(self, train_dir: Path, sizes: TrainSizes, num_classes: int):
        from torch.utils.data import DataLoader
        from torchvision import datasets, models
        from torchvision import transforms as T

        transform = T.Compose([
            T.RandomResizedCrop(sizes.image_size, scale=(0.6, 1.0), ratio=(0.85, 1.18)),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ])
        self.loader = DataLoader(datasets.ImageFolder(str(train_dir), transform), batch_size=sizes.batch_size,
                                 shuffle=True)
        self.model = models.resnet18(num_classes=num_classes)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        self.criterion = torch.nn.CrossEntropyLoss()
        self.batch_size = sizes.batch_size

    def run(self, steps: int) -> int:
        """Train ``steps`` batches; return the images seen. The per-batch line goes to a buffer (not the screen)."""
        self.model.train()
        seen = 0
        log = io.StringIO()
        with contextlib.redirect_stdout(log):
            for step, (images, targets) in enumerate(self.loader):
                if step >= steps:
                    break
                self.optimizer.zero_grad()
                outputs = self.model(images)
                loss = self.criterion(outputs, targets)
                loss.backward()
                self.optimizer.step()
                seen += targets.size(0)
                accuracy = (outputs.argmax(1) == targets).float().mean().item()
                print(f"step {step} loss {loss.item():.4f} accuracy {accuracy:.3f}")
        return seen


class SyntheticImages(torch.utils.data.Dataset):
    """``length`` samples of one fixed normalised random image ``(3, size, size)`` with cycling labels."""

    def __init__(self, length: int, size: int, num_classes: int):
        self.length, self.num_classes = length, num_classes
        self.image = torch.randn(3, size, size)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        return self.image, index % self.num_classes


# -- our path -------------------------------------------------------------------------------------------------------


class OurLoop:
    """``train.Training`` built from train.py's own arguments; times ``train_one_epoch`` over ``steps`` batches."""

    def __init__(self, train_dir: Path, sizes: TrainSizes, threads: int, scratch: Path, **options: str):
        import train as train_script

        argv = ["--train-dir", str(train_dir), "--validation-dir", str(train_dir),
                "--image-size", str(sizes.image_size), "--batch-size", str(sizes.batch_size),
                "--epochs", "1000",  # OneCycle's total steps must cover every timed repeat
                "--debugger", "false", "--threads", str(threads),
                "--model-dir", str(scratch / "model"), "--output-data-dir", str(scratch / "output"),
                "--checkpoint-dir", str(scratch / "checkpoints")]
        for key, value in options.items():
            argv += [f"--{key.replace('_', '-')}", str(value)]
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            self.args = train_script.parse_args(argv)
            self.training = train_script.Training(self.args, train_script.Distributed())
        self.batch_size = sizes.batch_size
        self.epoch = 0

    def run(self, steps: int) -> int:
        """Train ``steps`` batches with ``train_one_epoch``; return the images seen (drop_last batches)."""
        self.epoch += 1
        self.training.steps_per_epoch = steps
        self.training.train_one_epoch(self.epoch)
        return min(steps, len(self.training.train_loader)) * self.batch_size

    def run_synthetic(self, steps: int) -> int:
        """The same ``train_one_epoch`` over one fixed random batch repeated: compute only, no input pipeline."""
        from torch.utils.data import DataLoader

        loader = self.training.train_loader
        dataset = SyntheticImages(steps * self.batch_size, self.args.image_size, len(self.training.classes))
        # A real DataLoader (no workers) over ready tensors: whatever train_one_epoch asks of its loader works.
        self.training.train_loader = DataLoader(dataset, batch_size=self.batch_size, shuffle=True, drop_last=True,
                                                generator=torch.Generator())
        try:
            return self.run(steps)
        finally:
            self.training.train_loader = loader

    def load_only(self, steps: int) -> int:
        """Iterate the training DataLoader for ``steps`` batches with no model step; return the images read."""
        seen = 0
        for step, (images, _targets) in enumerate(self.training.train_loader):
            if step >= steps:
                break
            seen += images.size(0)
        return seen


def _rate(run, steps: int):
    """A callable for :func:`bench_common.interleaved`: images per second of one ``run(steps)``."""
    def measure() -> float:
        box = {}
        seconds = timed(lambda: box.setdefault("seen", run(steps)))
        return box["seen"] / seconds
    return measure


# -- draft decoding (a candidate fast path measured here; imgclf/data.py is the lead's) -----------------------------


def draft_reader(min_side: int):
    """An ``imgclf.data.read_image_tensor`` replacement that lets libjpeg decode JPEGs at 1/2, 1/4 or 1/8 scale.

    PIL's ``Image.draft`` picks the smallest DCT scale whose result is still at least ``min_side`` on both sides,
    so the preset's resize never upsamples; non-JPEG files fall back to the original reader.
    """
    import numpy as np
    from PIL import Image

    from imgclf import data

    original = data.read_image_tensor

    def read(path):
        if Path(path).suffix.lower() not in (".jpg", ".jpeg"):
            return original(path)
        with Image.open(path) as image:
            image.draft("RGB", (min_side, min_side))
            array = np.asarray(data.to_rgb(image), dtype=np.uint8)
        return torch.from_numpy(array.copy()).permute(2, 0, 1)

    return read


@contextlib.contextmanager
def patched_reader(reader):
    """Use ``reader`` as ``imgclf.data.read_image_tensor`` inside the block (workers fork and inherit it)."""
    from imgclf import data

    original = data.read_image_tensor
    data.read_image_tensor = reader
    try:
        yield
    finally:
        data.read_image_tensor = original


def draft_min_side(image_size: int, min_scale: float = 0.6) -> int:
    """Smallest decoded side that RandomResizedCrop(scale >= ``min_scale``) can crop to ``image_size`` without
    upsampling: the crop's side is at least sqrt(min_scale) of the image's (train.py's ``light`` preset: 0.6)."""
    return int(image_size / min_scale**0.5) + 1


# -- rows -----------------------------------------------------------------------------------------------------------


def _describe(sizes: TrainSizes, threads: int) -> str:
    return f"resnet18, {sizes.image_size} px crops of 500x375 JPEGs, batch {sizes.batch_size}, {threads} threads"


#: Row 1's variants of our path: train.py arguments on top of its defaults, and the table label of each.
OUR_VARIANTS = {
    "ours": ({}, "ours (train.py defaults: --amp auto, channels_last, workers auto)"),
    "ours_fp32": ({"amp": "false"}, "ours --amp false (fp32)"),
    "ours_no_workers": ({"workers": "0"}, "ours --workers 0 (decoding in the training process)"),
}


def row_training_loop(train_dir: Path, sizes: TrainSizes, threads: int, bf16: bool) -> list[Result]:
    """Row 1: img/s of ``Training.train_one_epoch`` (train.py's defaults, which use bf16 autocast where a step
    timed at start-up is faster, and a DataLoader worker on a CPU torch leaves idle; forced fp32; no worker) vs
    the seed-style loop.
    Goal from issue 7: >= 1.5x."""
    num_classes = sum(1 for p in Path(train_dir).iterdir() if p.is_dir())
    with tempfile.TemporaryDirectory(prefix="bench-train-") as scratch:
        loops = {name: OurLoop(train_dir, sizes, threads, Path(scratch) / name, **OUR_VARIANTS[name][0])
                 for name in OUR_VARIANTS}
        variants = {"seed": SeedStyleLoop(train_dir, sizes, num_classes).run,
                    **{name: loop.run for name, loop in loops.items()}}
        for run in variants.values():
            run(sizes.warmup_steps)
        rates = interleaved({name: _rate(run, sizes.steps) for name, run in variants.items()}, sizes.repeats)
        workers = loops["ours"].training.train_loader.num_workers
        amp = loops["ours"].training.amp_name
    settings = (f"{_describe(sizes, threads)}; {sizes.steps} batches x {sizes.repeats} repeats, round-robin, "
                f"after {sizes.warmup_steps} warm-up")
    results = []
    for name in OUR_VARIANTS:
        label = OUR_VARIANTS[name][1]
        detail = f"{rates[name]:.1f} vs seed-style {rates['seed']:.1f} img/s"
        if name == "ours":
            detail += f" (auto gave amp {amp}, {workers} workers); {settings}"
        results.append(Result(1, f"training loop: {label} / seed-style", rates[name] / rates["seed"], ">= 1.5",
                              detail, {"img_per_s": rates} if name == "ours" else {}))
    return results


def row_input_pipeline(train_dir: Path, sizes: TrainSizes, threads: int, bf16: bool) -> list[Result]:
    """Row 2: DataLoader-only img/s vs model-step img/s on synthetic tensors, and real-data training img/s over
    synthetic-data img/s with the same settings: train.py's defaults (bf16 autocast where the CPU has it, which
    leaves the input pipeline less time; workers on the CPUs torch leaves idle), with no worker, and forced fp32.
    The DataLoader-only rate is also given with draft JPEG decoding (a candidate reader, measured only).
    Goal from issue 7: real / synthetic >= 0.9."""
    reader = draft_reader(draft_min_side(sizes.image_size))

    def drafted(run):
        def call(steps):
            with patched_reader(reader):
                return run(steps)
        return call

    with tempfile.TemporaryDirectory(prefix="bench-input-") as scratch:
        scratch = Path(scratch)
        ours = OurLoop(train_dir, sizes, threads, scratch / "ours")
        in_process = OurLoop(train_dir, sizes, threads, scratch / "in_process", workers="0")
        fp32 = OurLoop(train_dir, sizes, threads, scratch / "fp32", amp="false")
        variants = {"load_only": ours.load_only, "load_only_draft": drafted(ours.load_only),
                    "synthetic": ours.run_synthetic, "real": ours.run, "real_no_workers": in_process.run,
                    "synthetic_fp32": fp32.run_synthetic, "real_fp32": fp32.run}
        for name in ("synthetic", "real", "real_no_workers", "synthetic_fp32", "real_fp32"):  # starts workers
            variants[name](sizes.warmup_steps)
        rates = interleaved({name: _rate(run, sizes.steps) for name, run in variants.items()}, sizes.repeats)
        amp, workers = ours.training.amp_name, ours.training.train_loader.num_workers
    where = f"{_describe(sizes, threads)}"
    results = [
        Result(2, f"input pipeline: DataLoader-only / model step on synthetic tensors (amp {amp})",
               rates["load_only"] / rates["synthetic"], None,
               f"loader {rates['load_only']:.0f} img/s (with draft JPEG decoding to >= "
               f"{draft_min_side(sizes.image_size)} px: {rates['load_only_draft']:.0f}), "
               f"model step {rates['synthetic']:.1f} img/s; {where}", {"img_per_s": rates, "threads": threads}),
    ]
    for name, synthetic, label in (
            ("real", "synthetic", f"train.py defaults (amp {amp}, workers auto: {workers})"),
            ("real_no_workers", "synthetic", f"--workers 0 (amp {amp})"),
            ("real_fp32", "synthetic_fp32", "--amp false (fp32)")):
        results.append(Result(2, f"input pipeline: real JPEGs / synthetic, {label}",
                              rates[name] / rates[synthetic], ">= 0.9",
                              f"real {rates[name]:.1f} vs synthetic {rates[synthetic]:.1f} img/s"))
    return results
