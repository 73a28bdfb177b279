"""The smdebug hook that ``train.py`` attaches to its model and loss: ``DebugSession``.

Two ways to build it, in this order:

1. SageMaker's hook config file (``/opt/ml/input/config/debughookconfig.json``, or the path in
   ``SMDEBUG_CONFIG_FILE_PATH``), written by SageMaker when the training job carries a ``DebugHookConfig``
   (managed Debugger, existing customers only): the hook follows it, collections and S3 path included.
2. Otherwise the script's own arguments: tensors go to ``out_dir`` (``$SM_OUTPUT_DATA_DIR/tensors``, so they
   travel in ``output.tar.gz`` to the ``debug`` step) with small collections, because saving every tensor of
   resnet18 at every step wrote 513 MB in 7 steps:

   ============================ ========================================== ==========================
   collection                   what                                       when (training steps)
   ============================ ========================================== ==========================
   ``losses``                   the registered loss, raw scalar            every step, train and eval
   ``gradients``                reductions only: mean of abs, l2 norm      every ``save_interval``
                                                                           and the first 10 steps
   ``weights``                  reduction only: variance                   same
   ``relu_input``               reduction only: variance of ReLU inputs    same
   ``gradient_samples``         raw gradients of the first and last layer  same
   ============================ ========================================== ==========================

   The first 10 training steps are dense because PoorWeightInitialization analyses them (its ``steps`` default).

If smdebug cannot be imported (or the hook cannot be built), ``create`` returns a no-op session whose
``available`` is False and ``reason`` says why, logs the reason at ERROR level and writes it to
``<out_dir>/hook_failed.json`` (``HOOK_FAILED_FILE``), which travels in ``output.tar.gz`` to the ``debug`` step.
Training goes on (a tuning trial or an evaluation is still worth having), but the debug step reports every
Debugger rule ``Skipped`` with that reason, and a blocking rule that could not judge fails the quality gate
(``imgclf.debugger.runner.build_report``): a job without tensors is never registered as if it had passed.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

#: SageMaker writes the managed hook config here (smdebug's DEFAULT_CONFIG_FILE_PATH).
DEFAULT_HOOK_CONFIG_PATH = "/opt/ml/input/config/debughookconfig.json"
#: smdebug's environment variable that overrides the hook config path.
HOOK_CONFIG_ENV = "SMDEBUG_CONFIG_FILE_PATH"
#: PoorWeightInitialization analyses this many first training steps (AWS default ``steps=10``).
INITIAL_DENSE_STEPS = 10
#: Reductions saved (smdebug names), only those the rules and the report read: each one is a separate event
#: record per tensor and saved step, so every reduction more multiplies what a saved step writes and slows
#: training.
GRADIENT_REDUCTIONS = {"abs_reductions": ["mean"], "norms": ["l2"]}  # VanishingGradient: mean(|g|)
VARIANCE_REDUCTION = {"reductions": ["variance"]}  # PoorWeightInitialization: activation-input variance
#: AWS default ``activation_inputs_regex`` of PoorWeightInitialization; module inputs are named
#: ``<module>_input_<i>`` by smdebug, so ReLU modules named ``relu`` (torchvision's naming) match.
RELU_INPUT_REGEX = ".*relu_input"
#: Written into ``out_dir`` when the hook could not start: ``{"reason": "..."}`` (read by the debug step's runner).
HOOK_FAILED_FILE = "hook_failed.json"

log = logging.getLogger(__name__)


def find_hook_config(hook_config_path: str | None = None) -> Path | None:
    """Return the managed hook config file to use, or None when there is none.

    Order: ``hook_config_path`` when given (it must exist: a missing file given on purpose is an error),
    then ``$SMDEBUG_CONFIG_FILE_PATH``, then ``/opt/ml/input/config/debughookconfig.json`` when present.
    Raises FileNotFoundError when ``hook_config_path`` is given and missing.
    """
    if hook_config_path:
        path = Path(hook_config_path)
        if not path.is_file():
            raise FileNotFoundError(
                f"hook config {path} does not exist; pass an existing debughookconfig.json or leave it out"
            )
        return path
    for candidate in (os.environ.get(HOOK_CONFIG_ENV), DEFAULT_HOOK_CONFIG_PATH):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


class DebugSession:
    """An smdebug hook on one model and loss, or a no-op stand-in when smdebug is unavailable.

    Attributes: ``available`` (bool), ``reason`` (why not available, else ""), ``hook`` (the
    ``smdebug.pytorch.Hook`` or None), ``out_dir`` (where tensors go: str or None), ``managed`` (built from
    SageMaker's hook config file).
    """

    def __init__(self, hook=None, reason: str = "", out_dir: str | None = None, managed: bool = False):
        self.hook = hook
        self.available = hook is not None
        self.reason = reason if hook is None else ""
        self.out_dir = out_dir
        self.managed = managed
        self._closed = False

    @classmethod
    def create(
        cls,
        out_dir: str,
        model,
        criterion,
        save_interval: int = 10,
        hook_config_path: str | None = None,
    ) -> DebugSession:
        """Build the hook, register ``model`` (a ``torch.nn.Module``) and the loss ``criterion``, and return it.

        ``out_dir``: folder for the tensors when no managed hook config exists (created; an existing one from
        an interrupted run is resumed by smdebug). ``save_interval`` (steps, >= 1, default 10): how often
        gradients, weights and ReLU inputs are saved. ``hook_config_path``: managed hook config file; found
        through ``find_hook_config`` when None. Raises ValueError for ``save_interval < 1`` and
        FileNotFoundError for a ``hook_config_path`` that does not exist; any smdebug failure gives a no-op
        session with the reason instead (logged at ERROR and written to ``<out_dir>/hook_failed.json``), so
        training never stops for the debugger but the debug step and the quality gate know why.
        """
        if int(save_interval) < 1:
            raise ValueError(f"save_interval must be >= 1 step, got {save_interval}; use e.g. 10")
        config_path = find_hook_config(hook_config_path)
        try:
            import smdebug.pytorch as smd
        except Exception as error:  # a broken install must not stop training, but it must be seen
            return cls._failed(out_dir, f"smdebug is not importable ({type(error).__name__}: {error})")
        (Path(out_dir) / HOOK_FAILED_FILE).unlink(missing_ok=True)  # a resumed job's earlier failure is over
        try:
            if config_path is not None:
                hook = float32_hook_class(smd).create_from_json_file(str(config_path))
                hook.register_module(model)
                hook.register_loss(criterion)
                return cls(hook=hook, out_dir=str(hook.out_dir), managed=True)
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            hook = _default_hook(smd, out_dir, model, int(save_interval))
            hook.register_module(model)
            hook.register_loss(criterion)
            return cls(hook=hook, out_dir=str(out_dir))
        except Exception as error:  # e.g. an smdebug/torch incompatibility: report it, keep training
            return cls._failed(out_dir, f"smdebug hook could not be created ({type(error).__name__}: {error})")

    @classmethod
    def _failed(cls, out_dir: str, reason: str) -> DebugSession:
        """The no-op session for a hook that could not start: log the reason and leave it in ``out_dir``."""
        log.error("Debugger hook NOT started, no tensors will be saved: %s. The debug step will report the "
                  "Debugger rules Skipped and the quality gate will fail on its blocking rules.", reason)
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / HOOK_FAILED_FILE).write_text(json.dumps({"reason": reason}) + "\n", encoding="utf-8")
        return cls(reason=reason, out_dir=str(out_dir))

    def status(self) -> dict:
        """``{"hook": bool, "managed": bool, "out_dir": str | None, "reason": str}`` for the job's history."""
        return {"hook": self.available, "managed": self.managed, "out_dir": self.out_dir, "reason": self.reason}

    def train_mode(self) -> None:
        """Mark the following forward/backward passes as training steps (smdebug ``modes.TRAIN``)."""
        if self.hook is not None:
            import smdebug.pytorch as smd

            self.hook.set_mode(smd.modes.TRAIN)

    def eval_mode(self) -> None:
        """Mark the following forward passes as evaluation steps (smdebug ``modes.EVAL``)."""
        if self.hook is not None:
            import smdebug.pytorch as smd

            self.hook.set_mode(smd.modes.EVAL)

    def close(self) -> None:
        """Flush the event files and write ``training_job_end.ts`` so readers know no more steps come. Idempotent."""
        if self.hook is not None and not self._closed:
            self._closed = True
            self.hook.close()

    def __enter__(self) -> DebugSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _default_hook(smd, out_dir: str, model, save_interval: int):
    """Build the small default hook (see the module docstring) for ``model``."""
    from smdebug.core.modes import ModeKeys

    every_step = smd.SaveConfig(save_interval=1)
    # Training steps only: the interval plus the first INITIAL_DENSE_STEPS; eval passes save no tensors here.
    sparse = smd.SaveConfig(
        mode_save_configs={
            ModeKeys.TRAIN: smd.SaveConfigMode(save_interval=save_interval),
            ModeKeys.EVAL: smd.SaveConfigMode(save_interval=save_interval, start_step=0, end_step=0),
            ModeKeys.PREDICT: smd.SaveConfigMode(save_interval=save_interval, start_step=0, end_step=0),
            ModeKeys.GLOBAL: smd.SaveConfigMode(save_interval=save_interval, start_step=0, end_step=0),
        }
    )
    dense_start = smd.SaveConfig(
        mode_save_configs={
            ModeKeys.TRAIN: smd.SaveConfigMode(save_interval=1, end_step=INITIAL_DENSE_STEPS),
            ModeKeys.EVAL: smd.SaveConfigMode(save_interval=1, start_step=0, end_step=0),
            ModeKeys.PREDICT: smd.SaveConfigMode(save_interval=1, start_step=0, end_step=0),
            ModeKeys.GLOBAL: smd.SaveConfigMode(save_interval=1, start_step=0, end_step=0),
        }
    )
    gradient_reductions = smd.ReductionConfig(**GRADIENT_REDUCTIONS)
    variance = smd.ReductionConfig(**VARIANCE_REDUCTION)
    raw = smd.ReductionConfig(save_raw_tensor=True)

    hook = float32_hook_class(smd)(out_dir=out_dir, save_config=every_step, include_collections=[])
    params = [name for name, p in model.named_parameters() if p.requires_grad and name.endswith("weight")]
    sampled = [params[0], params[-1]] if params else []
    specs = [
        ("gradients", "^gradient/", gradient_reductions, sparse),
        ("weights", "^(?!gradient).*weight$", variance, sparse),
        ("relu_input", RELU_INPUT_REGEX, variance, sparse),
        ("initial_gradients", "^gradient/", gradient_reductions, dense_start),
        ("initial_weights", "^(?!gradient).*weight$", variance, dense_start),
        ("initial_relu_input", RELU_INPUT_REGEX, variance, dense_start),
    ]
    if sampled:
        # smdebug names parameters "<ModelClass>_<parameter name>", hence the optional prefix.
        regex = "^gradient/(.*_)?(" + "|".join(re.escape(name) for name in sampled) + ")$"
        specs += [("gradient_samples", regex, raw, sparse), ("initial_gradient_samples", regex, raw, dense_start)]
    for name, regex, reduction_config, save_config in specs:
        collection = hook.get_collection(name)
        collection.include(regex)
        collection.reduction_config = reduction_config
        collection.save_config = save_config
        collection.save_histogram = False
        hook.include_collections.append(name)
    losses = hook.get_collection("losses")
    losses.save_config = every_step
    hook.include_collections.append("losses")
    return hook


def float32_hook_class(smd):
    """``smd.Hook`` whose saved tensors reach smdebug as float32.

    Under ``torch.autocast`` (bf16 on CPUs and Ampere GPUs, fp16 on the T4) module inputs and outputs are bf16 or
    fp16; smdebug 1.0.34 turns every saved tensor into numpy (``Hook._make_numpy_array``), and numpy has no
    bfloat16: the forward hook raised ``TypeError: Got unsupported ScalarType BFloat16`` and killed training.
    Every tensor smdebug saves passes through ``_save_for_tensor`` (parameters, gradients, module inputs and
    outputs: smdebug/pytorch/hook.py), so the cast happens there, once, before reductions are computed (a
    variance in bf16 would also lose precision). float32 and float64 tensors pass unchanged.
    """
    import torch

    class Float32Hook(smd.Hook):
        def _save_for_tensor(self, tensor_name, tensor_value, check_before_write=True):
            if (isinstance(tensor_value, torch.Tensor) and tensor_value.is_floating_point()
                    and tensor_value.dtype not in (torch.float32, torch.float64)):
                tensor_value = tensor_value.detach().float()
            return super()._save_for_tensor(tensor_name, tensor_value, check_before_write)

    return Float32Hook
