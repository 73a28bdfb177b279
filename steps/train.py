"""``train``: TrainingStep running ``train.py`` with the best hyperparameters the ``tune`` step found.

Channels ``train`` and ``validation`` <- the split step's outputs; ``weights`` <- ``training.weights_uri`` when set.
Hyperparameters: each tuned key from
``tune.properties.BestTrainingJob.TunedHyperParameters[<key>]``, the rest from the config. Model artifacts to
``s3://<bucket>/<prefix>/<pipeline>/<execution id>/train/<job name>/output/model.tar.gz``; ``output.tar.gz``
(history, tensors, profiler samples) beside it. Checkpoint S3 URI ``.../<pipeline>/train/checkpoints``, the same
in every execution because ``CheckpointConfig`` is part of the training step's cache key (AWS "Default cache key
attributes by pipeline step type"); SageMaker restores everything under it into ``/opt/ml/checkpoints`` for each
new job, and ``train.py`` keeps its own checkpoints in the ``TRAINING_JOB_NAME`` subfolder, so a new execution
never resumes an earlier one while a spot restart (same job name) does. Spot training (``training.spot``) with
``max_wait``. The job always runs under SageMaker's ``torch_distributed`` distribution (torchrun), because its
instance count is the ``TrainingInstanceCount`` parameter, known only at start time: torchrun on one node with
one process is a plain run (``WORLD_SIZE=1``), N instances or a multi-GPU instance are one DDP training
(``train.py`` reads torchrun's ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``). The SageMaker training toolkit starts
``torchrun --nnodes <hosts> --nproc_per_node <GPUs, or 1 on CPU>`` (sagemaker-training-toolkit,
``runner._get_by_runner_type`` and ``torch_distributed.TorchDistributedRunner``).

Volume encryption: ``security.kms_key_id`` goes to ``ResourceConfig.VolumeKmsKeyId`` only when the
``TrainingInstanceType`` parameter's default has no instance store (:mod:`pipeline.instances`); ``start`` refuses
an override of that parameter that crosses between the two kinds (:func:`pipeline.check.parameter_findings`).

Debugger: unmanaged by default (``train.py`` saves its tensors and utilization samples under
``SM_OUTPUT_DATA_DIR``; the SDK adds no hook, rules or profiler). With ``debugger.managed: true`` the job also
carries SageMaker's hook config, the five built-in rules with the configured parameters, the profiler config and
the ProfilerReport and LowGPUUtilization profiler rules.
"""

from __future__ import annotations

from sagemaker.workflow.steps import ProcessingStep, TrainingStep, TuningStep

from steps.context import StepContext, channels, make_estimator

STEP_NAME = "train"


def build(ctx: StepContext, split: ProcessingStep, tune: TuningStep) -> TrainingStep:
    """Return the ``train`` step: the tuned hyperparameters of the best tuning job plus the static ones."""
    estimator = make_estimator(
        ctx, STEP_NAME, ctx.parameters.training_instance_count, checkpoints=True, distributed=True
    )
    best = tune.properties.BestTrainingJob.TunedHyperParameters
    estimator.set_hyperparameters(**{key: best[key] for key in sorted(ctx.config.tuning.ranges)})
    step_args = estimator.fit(inputs=channels(split, ctx.config.training.weights_uri))
    return TrainingStep(name=STEP_NAME, step_args=step_args, cache_config=ctx.cache)
