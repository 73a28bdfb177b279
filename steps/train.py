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

from sagemaker.debugger import (
    CollectionConfig,
    DebuggerHookConfig,
    ProfilerConfig,
    ProfilerRule,
    Rule,
    rule_configs,
)
from sagemaker.inputs import TrainingInput
from sagemaker.pytorch import PyTorch
from sagemaker.workflow.steps import ProcessingStep, TrainingStep, TuningStep

import pipeline._entrypoints  # noqa: F401  (puts entrypoints/ on sys.path for imgclf)
from imgclf.metrics import METRIC_DEFINITIONS
from pipeline import tracking
from pipeline.instances import volume_kms_key
from steps.context import StepContext

STEP_NAME = "train"
CHANNELS = ("train", "validation")

#: Managed Debugger built-in rules, by their config name (AWS Debugger built-in rules documentation).
MANAGED_RULES = {
    "VanishingGradient": rule_configs.vanishing_gradient,
    "Overfit": rule_configs.overfit,
    "Overtraining": rule_configs.overtraining,
    "PoorWeightInitialization": rule_configs.poor_weight_initialization,
    "LossNotDecreasing": rule_configs.loss_not_decreasing,
}
MANAGED_PROFILER_RULES = {"LowGPUUtilization": rule_configs.LowGPUUtilization}
#: Collections the hook saves in managed mode (the ones the five rules read).
HOOK_COLLECTIONS = ("losses", "gradients", "weights", "biases")


def static_hyperparameters(ctx: StepContext) -> dict[str, str]:
    """train.py's fixed hyperparameters (kebab-case names, string values): model, weights, image size,
    Debugger save interval, profiler interval and ``training.hyperparameters``."""
    config = ctx.config
    values: dict[str, object] = {
        "model": config.training.model,
        "weights": config.training.weights,
        "image-size": config.training.image_size,
        "debug-save-interval": config.debugger.save_interval,
        "profiler-interval": config.debugger.profiler_interval_s,
        **config.training.hyperparameters,
    }
    return {key: _text(value) for key, value in sorted(values.items())}


def _text(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def channels(split: ProcessingStep, weights_uri: str | None = None) -> dict[str, TrainingInput]:
    """``{"train": ..., "validation": ...}`` TrainingInputs on the split step's outputs of the same names, plus
    ``weights`` (``SM_CHANNEL_WEIGHTS``: a .pth state_dict, ``training.weights_uri``) when given."""
    outputs = split.properties.ProcessingOutputConfig.Outputs
    inputs = {name: TrainingInput(s3_data=outputs[name].S3Output.S3Uri) for name in CHANNELS}
    if weights_uri:
        inputs["weights"] = TrainingInput(s3_data=weights_uri)
    return inputs


def _managed_debugger(ctx: StepContext) -> dict:
    debugger = ctx.config.debugger
    interval = str(debugger.save_interval)
    rules = []
    for name, params in debugger.rules.items():
        base = MANAGED_RULES[name]()
        # keep each rule's collections (e.g. relu_input's include_regex), with our save interval
        collections = [
            CollectionConfig(c["CollectionName"], {**c.get("CollectionParameters", {}), "save_interval": interval})
            for c in base.get("CollectionConfigurations", [])
        ]
        rules.append(
            Rule.sagemaker(
                base,
                rule_parameters={key: _text(value) for key, value in params.items()},
                collections_to_save=collections or None,
            )
        )
    rules.append(ProfilerRule.sagemaker(rule_configs.ProfilerReport()))
    for name, params in debugger.profiler_rules.items():
        if name in MANAGED_PROFILER_RULES:
            rule = MANAGED_PROFILER_RULES[name](**params)
            rules.append(ProfilerRule.sagemaker(rule))
    return {
        "debugger_hook_config": DebuggerHookConfig(
            s3_output_path=ctx.s3_uri(STEP_NAME, "debugger"),
            collection_configs=[CollectionConfig(c, {"save_interval": interval}) for c in HOOK_COLLECTIONS],
        ),
        "rules": rules,
        "profiler_config": ProfilerConfig(
            s3_output_path=ctx.s3_uri(STEP_NAME, "profiler"),
            system_monitor_interval_millis=max(100, int(debugger.profiler_interval_s * 1000)),
        ),
    }


def make_estimator(ctx: StepContext, step: str, instance_count, checkpoints: bool, distributed: bool,
                   extra_hyperparameters: dict[str, str] | None = None) -> PyTorch:
    """The PyTorch estimator running ``train.py`` from the code bundle (tune and train share it).

    ``instance_count``: an int or the ``TrainingInstanceCount`` parameter. ``checkpoints``: give the job a
    checkpoint S3 URI (not for tuning jobs: parallel trials must not share a checkpoint folder).
    ``distributed``: run under SageMaker's ``torch_distributed`` (torchrun), whatever the count.
    The volume KMS key is left out for instance types with instance store (:func:`pipeline.instances.volume_kms_key`
    of the config's ``instances.training_type``, the parameter's default).
    ``extra_hyperparameters``: fixed ``train.py`` arguments of this step only (string values).
    """
    config = ctx.config
    kwargs: dict = {}
    if config.debugger.managed:
        kwargs.update(_managed_debugger(ctx))
    else:
        kwargs.update(debugger_hook_config=False, disable_profiler=True)
    if config.training.spot:
        kwargs.update(use_spot_instances=True, max_wait=config.training.max_wait_s)
    if checkpoints and config.training.checkpoints:
        # Fixed: CheckpointConfig is in the cache key; train.py separates jobs by TRAINING_JOB_NAME below it.
        kwargs["checkpoint_s3_uri"] = ctx.s3_uri(step, "checkpoints")
    if distributed:
        kwargs["distribution"] = {"torch_distributed": {"enabled": True}}
    network = ctx.network_config
    return PyTorch(
        entry_point="train.py",
        source_dir=ctx.code.s3_uri,
        framework_version=config.framework.version,
        py_version=config.framework.py_version,
        image_uri=ctx.training_image,
        role=config.role_arn,
        instance_type=ctx.parameters.training_instance_type,
        instance_count=instance_count,
        volume_size=config.instances.volume_size_gb,
        volume_kms_key=volume_kms_key(config.instances.training_type, config.security.kms_key_id),
        output_kms_key=config.security.kms_key_id,
        max_run=config.instances.max_runtime_s,
        output_path=ctx.execution_uri(step),  # OutputDataConfig is not part of the cache key
        code_location=ctx.s3_uri("code"),
        base_job_name=ctx.job_name(step),
        hyperparameters={**static_hyperparameters(ctx), **(extra_hyperparameters or {})},
        metric_definitions=list(METRIC_DEFINITIONS),
        subnets=network.subnets if network else None,
        security_group_ids=network.security_group_ids if network else None,
        enable_network_isolation=config.security.enable_network_isolation,
        encrypt_inter_container_traffic=config.security.encrypt_inter_container_traffic,
        environment={"PYTHONUNBUFFERED": "1", **tracking.job_environment(config, step)},
        sagemaker_session=ctx.session,
        tags=ctx.tags,
        **kwargs,
    )


def build(ctx: StepContext, split: ProcessingStep, tune: TuningStep) -> TrainingStep:
    """Return the ``train`` step: the tuned hyperparameters of the best tuning job plus the static ones."""
    estimator = make_estimator(
        ctx, STEP_NAME, ctx.parameters.training_instance_count, checkpoints=True, distributed=True
    )
    best = tune.properties.BestTrainingJob.TunedHyperParameters
    estimator.set_hyperparameters(**{key: best[key] for key in sorted(ctx.config.tuning.ranges)})
    step_args = estimator.fit(inputs=channels(split, ctx.config.training.weights_uri))
    return TrainingStep(name=STEP_NAME, step_args=step_args, cache_config=ctx.cache)
