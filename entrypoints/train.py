"""Training script of the ``tune`` and ``train`` steps: fine-tune a torchvision classifier on an ImageFolder channel.

SageMaker training container contract (every path overridable by argument, for local runs and tests):
    SM_CHANNEL_TRAIN, SM_CHANNEL_VALIDATION   ImageFolder trees written by split.py
    SM_CHANNEL_WEIGHTS (optional)             a .pth state_dict to start from (``--weights`` file name in it)
    SM_MODEL_DIR        -> model.tar.gz: model.pth, classes.json, model_config.json, code/ (serves itself)
    SM_OUTPUT_DATA_DIR  -> output.tar.gz: history.json, tensors/ (smdebug), profiler/ (utilization samples)
    SM_CHECKPOINT_DIR or --checkpoint-dir (default /opt/ml/checkpoints): <TRAINING_JOB_NAME>/checkpoint.pth
                        (checkpoint.pth directly without TRAINING_JOB_NAME), resumed when present
    SM_NUM_GPUS, SM_HOSTS, SM_CURRENT_HOST; WORLD_SIZE/RANK/LOCAL_RANK set by torchrun under SageMaker's
    ``torch_distributed`` distribution -> DistributedDataParallel.

One metric line per epoch (the tuner's MetricDefinitions parse it; see imgclf/metrics.py):
    epoch=3 train_loss=0.4100 train_accuracy=0.8800 validation_loss=0.3800 validation_accuracy=0.9120 lr=...
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from imgclf import checkpoint as ckpt
from imgclf import data, models, precision, presets, tracking
from imgclf.host import usable_cpus
from imgclf.hparams import add, boolean, env_path, quoted
from imgclf.metrics import format_metric_line

# Not requirements.txt: it pins smdebug and numpy 1 for training; the inference container needs nothing extra.
CODE_FILES = ("inference.py",)
#: Seconds between progress lines inside an epoch (a 224-px epoch on a CPU takes minutes; a 28-px one seconds and
#: prints none). ``IMGCLF_PROGRESS_INTERVAL_S`` overrides it; the lines match none of the tuner's metric regexes.
PROGRESS_INTERVAL_S = float(os.environ.get("IMGCLF_PROGRESS_INTERVAL_S", "15"))


def parse_args(argv=None) -> argparse.Namespace:
    """Hyperparameters and paths. Hyperparameter values may be JSON-quoted (``'"64"'``) as SageMaker sends them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add(parser, "model", type=quoted(str), default="resnet18", choices=None)
    add(parser, "weights", type=quoted(str), default="none",
        help="none | a .pth file (absolute, or a name inside the weights channel) | torchvision weights name")
    add(parser, "image-size", type=quoted(int), default=224, help="crop size in pixels")
    add(parser, "epochs", type=quoted(int), default=4)
    add(parser, "batch-size", type=quoted(int), default=64, help="per process (per GPU under DDP)")
    add(parser, "lr", type=quoted(float), default=0.05, help="peak learning rate")
    add(parser, "momentum", type=quoted(float), default=0.9)
    add(parser, "weight-decay", type=quoted(float), default=5e-4)
    add(parser, "optimizer", type=quoted(str), default="sgd", choices=None, help="sgd | adamw")
    add(parser, "lr-scheduler", type=quoted(str), default="onecycle", help="onecycle | cosine | constant")
    add(parser, "label-smoothing", type=quoted(float), default=0.0)
    add(parser, "augment", type=quoted(str), default="light", help="none | light | standard (imgclf/presets.py)")
    add(parser, "seed", type=quoted(int), default=42)
    add(parser, "workers", type=quoted(str), default="auto", help="DataLoader workers per process, or auto")
    add(parser, "amp", type=quoted(str), default="auto",
        help="auto (bf16/fp16 where a timed step at start-up is faster than fp32, imgclf/precision.py) | true | "
             "false | bfloat16 | float16")
    add(parser, "channels-last", type=quoted(str), default="auto", help="auto (CUDA and CPU) | true | false")
    add(parser, "threads", type=quoted(int), default=0, help="torch CPU threads; 0 = all cores of this process")
    add(parser, "max-steps-per-epoch", type=quoted(int), default=0, help="cap batches per epoch (0 = all)")
    add(parser, "debug-save-interval", type=quoted(int), default=10, help="smdebug: save tensors every N steps")
    add(parser, "profiler-interval", type=quoted(float), default=0.5, help="seconds between utilization samples")
    add(parser, "debugger", type=boolean, default=True, help="save tensors and utilization for the debug step")
    add(parser, "train-dir", default=env_path("SM_CHANNEL_TRAIN", "/opt/ml/input/data/train"))
    add(parser, "validation-dir", default=env_path("SM_CHANNEL_VALIDATION", "/opt/ml/input/data/validation"))
    add(parser, "weights-dir", default=env_path("SM_CHANNEL_WEIGHTS", "/opt/ml/input/data/weights"))
    add(parser, "model-dir", default=env_path("SM_MODEL_DIR", "/opt/ml/model"))
    add(parser, "output-data-dir", default=env_path("SM_OUTPUT_DATA_DIR", "/opt/ml/output/data"))
    add(parser, "checkpoint-dir", default=env_path("SM_CHECKPOINT_DIR", "/opt/ml/checkpoints"))
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # SageMaker may add hyperparameters of its own; say so rather than fail the job
        print(f"note: ignoring unknown arguments {unknown}", file=sys.stderr)
    if args.model not in models.MODEL_NAMES:
        parser.error(f"unknown --model {args.model!r}: choose one of {', '.join(models.MODEL_NAMES)}")
    if args.optimizer not in ("sgd", "adamw"):
        parser.error(f"unknown --optimizer {args.optimizer!r}: choose sgd or adamw")
    if args.lr_scheduler not in ("onecycle", "cosine", "constant"):
        parser.error(f"unknown --lr-scheduler {args.lr_scheduler!r}: choose onecycle, cosine or constant")
    for name in ("epochs", "batch_size", "image_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not (args.lr > 0 and math.isfinite(args.lr)):
        parser.error(f"--lr must be a positive number, got {args.lr}")
    # SageMaker restores everything under the checkpoint S3 URI (earlier jobs' too) into this folder; a job keeps its
    # own under its name (TRAINING_JOB_NAME: sagemaker-training-toolkit params.py), which a spot restart keeps.
    if os.environ.get("TRAINING_JOB_NAME"):
        args.checkpoint_dir = os.path.join(args.checkpoint_dir, os.environ["TRAINING_JOB_NAME"])
    return args


class Distributed:
    """World size, rank and device of this process; DDP is on when torchrun set WORLD_SIZE > 1."""

    def __init__(self):
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world_size > 1
        if torch.cuda.is_available():
            torch.cuda.set_device(self.local_rank)
            self.device = torch.device("cuda", self.local_rank)
        else:
            self.device = torch.device("cpu")
        if self.enabled:
            dist.init_process_group(backend="nccl" if self.device.type == "cuda" else "gloo")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_sum(self, *values: float) -> list[float]:
        """Sum numbers over every process (identity without DDP)."""
        if not self.enabled:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def close(self) -> None:
        if self.enabled:
            dist.destroy_process_group()


def resolve_weights(args) -> str:
    """A weights file named relative to the weights channel becomes its full path; other values pass through."""
    candidate = Path(args.weights_dir) / args.weights
    if args.weights.lower() != "none" and candidate.is_file():
        return str(candidate)
    return args.weights


def worker_count(setting: str, device: torch.device) -> int:
    """DataLoader workers per process for ``--workers`` (an integer, or ``auto``).

    ``auto`` on CUDA: the CPUs per GPU minus one (1-8), to keep the GPU fed. On CPU: the CPUs of this job that torch
    does not compute on (the job's CPUs are ``SM_NUM_CPUS``, which SageMaker sets and local mode sets to the job's
    share, else the CPUs this process may use), at most 4: with ``--threads 1`` on 2 CPUs, one worker decodes the
    next batch on the idle core, so a step waits on decoding hardly more than on pre-decoded data. When torch uses every
    CPU, workers would only take cycles from compute: 0 up to 4 CPUs, else a quarter of them (at most 4).
    """
    if setting != "auto":
        return max(0, int(setting))
    cpus = usable_cpus()
    if device.type == "cuda":
        return max(1, min(8, cpus // max(1, torch.cuda.device_count()) - 1))
    declared = os.environ.get("SM_NUM_CPUS", "")
    budget = int(declared) if declared.isdigit() and int(declared) > 0 else cpus
    spare = budget - torch.get_num_threads()
    if spare >= 1:
        return min(4, spare)
    return 0 if budget <= 4 else min(4, budget // 4)


def data_cache_bytes() -> int:
    """Memory for the datasets' caches of decoded images (:class:`imgclf.data.ImageFolderDataset`), in bytes, for
    the whole process and its DataLoader workers: an eighth of the machine's memory, at most 1 GiB (a small data
    set such as the bundled digits fits whole; ml.g4dn.xlarge has 16 GiB)."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        memory = 8 << 30
    return min(1 << 30, memory // 8)


def build_loaders(args, classes, sizes, env: Distributed):
    workers = worker_count(args.workers, env.device)
    # each worker process fills its own copy of the cache; the training set gets most of the budget
    budget = data_cache_bytes() // max(1, workers)
    train_set = data.ImageFolderDataset(
        args.train_dir, classes,
        presets.ClassificationPresetTrain(sizes["crop_size"], sizes["mean"], sizes["std"], args.augment,
                                          resize_size=sizes["resize_size"]),
        cache_bytes=budget * 4 // 5)
    validation_set = data.ImageFolderDataset(
        args.validation_dir, classes,
        presets.ClassificationPresetEval(sizes["crop_size"], sizes["resize_size"], sizes["mean"], sizes["std"]),
        cache_bytes=budget // 5)
    common = {"num_workers": workers, "pin_memory": env.device.type == "cuda", "persistent_workers": workers > 0}
    if workers > 0:
        common["prefetch_factor"] = 4
    train_sampler = DistributedSampler(train_set, seed=args.seed) if env.enabled else None
    validation_sampler = DistributedSampler(validation_set, shuffle=False) if env.enabled else None
    generator = torch.Generator().manual_seed(args.seed)
    train_loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=train_sampler is None,
                              sampler=train_sampler, drop_last=len(train_set) > args.batch_size,
                              generator=generator, **common)
    validation_loader = DataLoader(validation_set, batch_size=max(args.batch_size, 128), shuffle=False,
                                   sampler=validation_sampler, **common)
    return train_loader, validation_loader, train_sampler


def warmup_share(total_steps: int) -> float:
    """OneCycleLR's ``pct_start`` for ``total_steps``: a quarter of the run, except where the warm-up would end at
    step 0. OneCycleLR ends its warm-up at step ``pct_start * total_steps - 1`` and divides by that length
    (torch.optim.lr_scheduler.OneCycleLR.get_lr), so 0.25 with 4 steps (2 epochs of 2 batches) raises
    ZeroDivisionError on the first step; 0.3 there ends it at step 0.2."""
    return 0.3 if 0.25 * total_steps == 1 else 0.25


def build_optimizer(args, model: nn.Module, steps_per_epoch: int):
    # No weight decay on norm layers and biases (torchvision reference's --norm-weight-decay 0).
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (no_decay if parameter.ndim <= 1 else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if args.optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, lr=args.lr, momentum=args.momentum, nesterov=args.momentum > 0)
    else:
        optimizer = torch.optim.AdamW(groups, lr=args.lr)
    total_steps = max(1, args.epochs * steps_per_epoch)
    if args.lr_scheduler == "onecycle":
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=total_steps,
                                                        pct_start=warmup_share(total_steps))
    elif args.lr_scheduler == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    else:
        scheduler = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    return optimizer, scheduler


class Training:
    """One training run: model, optimizer, schedule, mixed precision, debugger hook and profiler."""

    def __init__(self, args, env: Distributed):
        self.args, self.env = args, env
        self.classes = data.list_classes(Path(args.train_dir))
        if len(self.classes) < 2:
            raise SystemExit(f"error: {args.train_dir} has {len(self.classes)} class folder(s); need at least 2 "
                             "(ImageFolder layout: one sub-folder per class)")
        weights = resolve_weights(args)
        metadata = models.weights_transforms_metadata(args.model, weights)
        self.sizes = presets.eval_sizes(args.image_size, metadata)
        self.train_loader, self.validation_loader, self.train_sampler = build_loaders(args, self.classes,
                                                                                      self.sizes, env)
        self.steps_per_epoch = len(self.train_loader)
        if args.max_steps_per_epoch:
            self.steps_per_epoch = min(self.steps_per_epoch, args.max_steps_per_epoch)
        model = models.build_model(args.model, len(self.classes), weights)
        self.channels_last = args.channels_last == "true" or args.channels_last == "auto"
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        self.model = model.to(env.device, memory_format=memory_format)
        # --amp auto: fp32 unless the candidate (CUDA: bf16 or fp16 with a GradScaler; CPU: bf16) trains this model
        # at this input size clearly faster, timed here at start-up (imgclf/precision.py says why).
        self.criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
        timer = precision.train_step_timer(self.model, self.criterion, (3, args.image_size, args.image_size),
                                           len(self.classes), env.device, memory_format)
        autocast_dtype, self.amp_timings = precision.training_autocast(args.amp, env.device, args.batch_size,
                                                                       timer, env.all_sum)
        self.amp = autocast_dtype is not None
        self.amp_dtype = autocast_dtype or torch.bfloat16
        self.amp_name = precision.autocast_name(autocast_dtype)
        self.scaler = torch.amp.GradScaler(env.device.type,
                                           enabled=self.amp and self.amp_dtype == torch.float16)
        self.optimizer, self.scheduler = build_optimizer(args, self.model, self.steps_per_epoch)
        self.net = nn.parallel.DistributedDataParallel(
            self.model, device_ids=[env.local_rank] if env.device.type == "cuda" else None) \
            if env.enabled else self.model
        self.start_epoch, self.history = 1, []
        self.debug = self.monitor = None
        self.run = tracking.JobRun()  # MLflow run of this job (main process only; see main)

    # -- checkpoints -------------------------------------------------------------------------------------------
    def resume(self) -> None:
        state = ckpt.load_checkpoint(self.args.checkpoint_dir)
        if state is None:
            return
        if state.get("classes") != self.classes or state.get("model_name") != self.args.model:
            print(f"warning: checkpoint in {self.args.checkpoint_dir} is for another model or class list; "
                  "starting fresh", file=sys.stderr)
            return
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        # A resumed run may ask for more epochs than the one that wrote the checkpoint: stretch the schedule.
        total_steps = max(1, self.args.epochs * self.steps_per_epoch)
        if isinstance(self.scheduler, torch.optim.lr_scheduler.OneCycleLR):
            self.scheduler.total_steps = total_steps
        elif isinstance(self.scheduler, torch.optim.lr_scheduler.CosineAnnealingLR):
            self.scheduler.T_max = total_steps
        self.scaler.load_state_dict(state["scaler"])
        ckpt.set_rng_state(state["rng"])
        self.history = state["history"]
        self.start_epoch = state["epoch"] + 1
        print(f"resumed from checkpoint after epoch {state['epoch']}", flush=True)

    def save_checkpoint(self, epoch: int) -> None:
        if not self.env.is_main:
            return
        ckpt.save_checkpoint(self.args.checkpoint_dir, {
            "epoch": epoch, "model_name": self.args.model, "classes": self.classes,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            "rng": ckpt.rng_state(), "history": self.history,
        })

    # -- debugger and profiler ---------------------------------------------------------------------------------
    def start_debugger(self) -> None:
        if not (self.args.debugger and self.env.is_main):
            return
        # smdebug logs ~70 INFO lines per job; its warnings and errors still show.
        os.environ.setdefault("SMDEBUG_LOG_LEVEL", "warning")
        try:
            from imgclf.debugger.hook import DebugSession
            from imgclf.debugger.profiler import SystemMonitor
        except ImportError as error:
            print(f"note: debugger package unavailable ({error}); no tensors saved", file=sys.stderr)
            return
        output = Path(self.args.output_data_dir)
        self.debug = DebugSession.create(str(output / "tensors"), self.model, self.criterion,
                                         save_interval=self.args.debug_save_interval)
        if not self.debug.available:
            print(f"note: smdebug hook off: {self.debug.reason}", file=sys.stderr)
        self.monitor = SystemMonitor(str(output / "profiler"), interval_s=self.args.profiler_interval)
        self.monitor.start()

    def stop_debugger(self) -> None:
        if self.monitor is not None:
            self.monitor.stop()
        if self.debug is not None:
            self.debug.close()

    # -- loops -------------------------------------------------------------------------------------------------
    def to_device(self, images, targets):
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        images = images.to(self.env.device, non_blocking=True, memory_format=memory_format)
        return images, targets.to(self.env.device, non_blocking=True)

    def train_one_epoch(self, epoch: int) -> tuple[float, float]:
        """One pass over the training channel. Returns (mean loss, accuracy) over every process."""
        self.net.train()
        if self.debug is not None:
            self.debug.train_mode()
        if self.train_sampler is not None:
            self.train_sampler.set_epoch(epoch)
        # Shuffle order and worker seeds depend on (seed, epoch) alone, so a resumed run sees the same batches.
        self.train_loader.generator.manual_seed(self.args.seed * 1000 + epoch)
        loss_sum = correct = seen = 0.0
        loaded_at = epoch_started = reported_at = time.perf_counter()
        for step, (images, targets) in enumerate(self.train_loader):
            if step >= self.steps_per_epoch:
                break
            started = time.perf_counter()
            images, targets = self.to_device(images, targets)
            with torch.autocast(self.env.device.type, dtype=self.amp_dtype, enabled=self.amp):
                logits = self.net(images)
                loss = self.criterion(logits, targets)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            batch = targets.size(0)
            loss_sum += loss.item() * batch
            correct += (logits.argmax(1) == targets).sum().item()
            seen += batch
            finished = time.perf_counter()
            if self.monitor is not None:
                self.monitor.record_step(data_seconds=started - loaded_at, compute_seconds=finished - started)
            if self.env.is_main and finished - reported_at >= PROGRESS_INTERVAL_S:
                print(f"epoch {epoch}: batch {step + 1}/{self.steps_per_epoch}, {finished - epoch_started:.0f} s",
                      flush=True)
                reported_at = finished
            loaded_at = finished
        loss_sum, correct, seen = self.env.all_sum(loss_sum, correct, seen)
        return loss_sum / max(seen, 1), correct / max(seen, 1)

    @torch.inference_mode()
    def validate(self) -> tuple[float, float]:
        """Loss and accuracy on the validation channel, over every process."""
        self.net.eval()
        if self.debug is not None:
            self.debug.eval_mode()
        loss_sum = correct = seen = 0.0
        for images, targets in self.validation_loader:
            images, targets = self.to_device(images, targets)
            with torch.autocast(self.env.device.type, dtype=self.amp_dtype, enabled=self.amp):
                logits = self.net(images)
                loss = self.criterion(logits.float(), targets)
            loss_sum += loss.item() * targets.size(0)
            correct += (logits.argmax(1) == targets).sum().item()
            seen += targets.size(0)
        loss_sum, correct, seen = self.env.all_sum(loss_sum, correct, seen)
        return loss_sum / max(seen, 1), correct / max(seen, 1)

    def fit(self) -> None:
        for epoch in range(self.start_epoch, self.args.epochs + 1):
            started = time.perf_counter()
            train_loss, train_accuracy = self.train_one_epoch(epoch)
            validation_loss, validation_accuracy = self.validate()
            record = {"epoch": epoch, "train_loss": train_loss, "train_accuracy": train_accuracy,
                      "validation_loss": validation_loss, "validation_accuracy": validation_accuracy,
                      "lr": self.optimizer.param_groups[0]["lr"], "epoch_seconds": time.perf_counter() - started}
            self.history.append(record)
            # Checkpoint first: once an epoch's metric line is out, a kill can no longer lose that epoch.
            self.save_checkpoint(epoch)
            if self.env.is_main:
                print(format_metric_line(**record), flush=True)
                self.run.log_metrics({k: v for k, v in record.items() if k != "epoch"}, step=epoch)

    # -- outputs -----------------------------------------------------------------------------------------------
    def save_model(self) -> None:
        """Write the model artifacts (model.pth, classes.json, model_config.json, code/) and history.json."""
        if not self.env.is_main:
            return
        model_dir, output_dir = Path(self.args.model_dir), Path(self.args.output_data_dir)
        model_dir.mkdir(parents=True, exist_ok=True)
        output_dir.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        torch.save(state, model_dir / "model.pth")
        (model_dir / "classes.json").write_text(json.dumps(self.classes, ensure_ascii=False, indent=1),
                                                encoding="utf-8")
        config = {"model": self.args.model, "num_classes": len(self.classes), "image_size": self.args.image_size,
                  "channels": 3, "weights": self.args.weights, **self.sizes}
        (model_dir / "model_config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
        copy_serving_code(model_dir / "code")
        hyperparameters = {k: v for k, v in vars(self.args).items() if not k.endswith("_dir")}
        # whether the Debugger hook ran, and why not (imgclf.debugger.hook.DebugSession.status)
        debugger = self.debug.status() if self.debug is not None else {
            "hook": False, "reason": "--debugger false" if not self.args.debugger else "debugger package missing"}
        (output_dir / "history.json").write_text(
            json.dumps({"epochs": self.history, "hyperparameters": hyperparameters, "classes": self.classes,
                        "debugger": debugger}, indent=1), encoding="utf-8")


def copy_serving_code(code_dir: Path) -> None:
    """Copy inference.py and its imgclf helpers into the model's ``code/`` folder.

    The AWS PyTorch inference container runs ``code/inference.py`` from the archive (SAGEMAKER_PROGRAM), so the
    archive serves itself with no repack step.
    """
    source = Path(__file__).resolve().parent
    code_dir.mkdir(parents=True, exist_ok=True)
    for name in CODE_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, code_dir / name)
    shutil.copytree(source / "imgclf", code_dir / "imgclf", dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "debugger"))


def install_signal_handlers() -> None:
    """SIGTERM (a spot reclaim, a stopped job) exits at once: the last epoch's checkpoint is already on disk."""
    def terminate(signum, _frame):
        print(f"received signal {signum}: stopping; resume restarts after the last checkpointed epoch",
              file=sys.stderr, flush=True)
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)


def main(argv=None) -> int:
    args = parse_args(argv)
    install_signal_handlers()
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    env = Distributed()
    try:
        training = Training(args, env)
        print(f"training {args.model} on {len(training.train_loader.dataset)} images of {len(training.classes)} "
              f"classes, validating on {len(training.validation_loader.dataset)}; device={env.device} "
              f"world_size={env.world_size} amp={training.amp_name} channels_last={training.channels_last}",
              flush=True)
        if training.amp_timings and env.is_main:
            print(f"--amp {args.amp}: " + precision.describe_choice(
                training.amp_dtype if training.amp else None, training.amp_timings,
                f"forward+backward of {args.image_size}-px images, batch {args.batch_size}"), flush=True)
        if env.is_main:
            training.run = tracking.JobRun.start("TrainingJob")
            training.run.log_params({k.replace("_", "-"): v for k, v in vars(args).items() if not k.endswith("_dir")})
        training.resume()
        training.start_debugger()
        try:
            training.fit()
        except BaseException as error:  # a stop (SIGTERM: early stopping, spot) is KILLED, a crash FAILED
            training.run.end("FAILED" if isinstance(error, Exception) else "KILLED")
            raise
        finally:
            training.stop_debugger()
        training.save_model()
        training.run.end()
    except (ValueError, models.WeightsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        env.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
