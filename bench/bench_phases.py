"""Row 7: where one epoch of the local pipeline's training goes (``make run``: 28-px digits, lenet, batch 32).

Each phase is timed in CPU seconds of this process (``time.process_time``) with ``--workers 0`` and the bench's
torch threads (1 by default): on a shared host, CPU time is what a phase costs, while wall time also counts the
other jobs. Phases: data (decode, transforms, collate: iterating the DataLoader alone), the training step on those
same batches (``train.Training.train_one_epoch`` without and with the Debugger hook and profiler), the forward
pass alone, validation of the validation images, and one checkpoint. The epoch is rebuilt from them as
``steps x (data + step) + validation + checkpoint``, and each phase is given as its share of that epoch.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import time
from pathlib import Path

import torch
from bench_common import Result

clock = time.process_time


def _cpu_seconds(function) -> tuple[float, object]:
    started = clock()
    value = function()
    return clock() - started, value


class _Batches:
    """The same decoded batches again, as ``train_one_epoch`` iterates its loader (no input pipeline cost)."""

    def __init__(self, batches: list):
        self.batches, self.generator = batches, torch.Generator()

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def row_epoch_phases(threads: int, steps: int = 8, per_class: int = 500, image_size: int = 28,
                     batch_size: int = 32, model: str = "lenet") -> list[Result]:
    """Row 7 (see the module docstring): shares of one epoch on ``per_class`` x 10 bundled digits (80% training,
    10% validation, as the split step makes them), timed over ``steps`` batches."""
    import train as train_script

    from pipeline.sample_data import write_digits

    with tempfile.TemporaryDirectory(prefix="bench-phases-") as scratch:
        scratch = Path(scratch)
        write_digits(scratch / "all", per_class=per_class)
        for name in ("train", "validation"):
            (scratch / name).mkdir()
        for class_dir in sorted((scratch / "all").iterdir()):
            files = sorted(class_dir.iterdir())
            cut = int(len(files) * 0.8)
            for target, chosen in (("train", files[:cut]), ("validation", files[cut:cut + len(files) // 10])):
                (scratch / target / class_dir.name).mkdir()
                for path in chosen:
                    os.link(path, scratch / target / class_dir.name / path.name)
        argv = ["--train-dir", str(scratch / "train"), "--validation-dir", str(scratch / "validation"),
                "--model", model, "--image-size", str(image_size), "--batch-size", str(batch_size), "--epochs", "6",
                "--threads", str(threads), "--workers", "0", "--debug-save-interval", "5",
                "--model-dir", str(scratch / "model"), "--output-data-dir", str(scratch / "output"),
                "--checkpoint-dir", str(scratch / "checkpoints")]
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            args = train_script.parse_args(argv)
            torch.set_num_threads(threads)
            training = train_script.Training(args, train_script.Distributed())
        full_steps = len(training.train_loader)
        iterator = iter(training.train_loader)
        data_s, batches = _cpu_seconds(lambda: [next(iterator) for _ in range(steps)])
        training.train_loader, training.steps_per_epoch = _Batches(batches), steps
        training.train_one_epoch(1)  # warm-up: oneDNN builds its kernels on the first steps
        step_s, _ = _cpu_seconds(lambda: training.train_one_epoch(2))
        with contextlib.redirect_stderr(io.StringIO()):
            training.start_debugger()
        hook_s, _ = _cpu_seconds(lambda: training.train_one_epoch(3))
        training.stop_debugger()
        training.debug = training.monitor = None
        images = batches[0][0].to(memory_format=torch.channels_last if training.channels_last else
                                  torch.contiguous_format)
        training.net.train()
        forward_s, _ = _cpu_seconds(lambda: [training.net(images) for _ in range(3)])
        validation_s, _ = _cpu_seconds(training.validate)
        checkpoint_s, _ = _cpu_seconds(lambda: training.save_checkpoint(1))
        amp = training.amp_name
        from imgclf import precision

        probe = precision.describe_choice(training.amp_dtype if training.amp else None, training.amp_timings,
                                          "at start-up")
    data, step, hook, forward = data_s / steps, step_s / steps, hook_s / steps, forward_s / 3
    epoch = full_steps * (data + step) + validation_s + checkpoint_s
    where = (f"{model}, {image_size} px, batch {batch_size}, {full_steps} steps per epoch, amp {amp}, {threads} "
             f"threads, --workers 0; CPU seconds (process_time) over {steps} batches")
    shares = [
        ("data (decode, transforms, collate)", full_steps * data, f"{data * 1000:.0f} ms per batch"),
        ("training steps (forward, backward, optimizer)", full_steps * step, f"{step * 1000:.0f} ms per step "
         f"(forward alone {forward * 1000:.0f} ms; --amp auto: {probe}, wall seconds)"),
        ("validation", validation_s, f"{validation_s:.2f} s per epoch"),
        ("checkpoint", checkpoint_s, f"{checkpoint_s:.2f} s per epoch"),
    ]
    results = [Result(7, f"epoch phases: {name} / epoch", seconds / epoch, None,
                      f"{detail}; epoch {epoch:.1f} CPU s; {where}", {"seconds": seconds, "epoch_s": epoch})
               for name, seconds, detail in shares]
    results.append(Result(7, "epoch phases: training step with the Debugger hook and profiler / without", hook / step,
                          None, f"{hook * 1000:.0f} vs {step * 1000:.0f} ms per step (the train step pays it; "
                          "tuning trials run without: steps/tune.py sets debugger=false)"))
    results.append(Result(7, "epoch phases: training step / forward pass alone", step / forward, None,
                          f"{step * 1000:.0f} vs {forward * 1000:.0f} ms"))
    return results
