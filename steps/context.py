"""What every step builder needs: the config, the offline session, the pipeline parameters, the code bundle,
and the two job runners the steps share: :func:`make_processor` (split, debug, evaluate) and
:func:`make_estimator` (tune, train).

Built once by :func:`pipeline.build.get_pipeline` and handed to each ``steps/<step>.py`` builder, so a builder
is a pure function of (context, upstream steps) and the builders agree on paths, images and parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from sagemaker import image_uris
from sagemaker.debugger import (
    CollectionConfig,
    DebuggerHookConfig,
    ProfilerConfig,
    ProfilerRule,
    Rule,
    rule_configs,
)
from sagemaker.inputs import TrainingInput
from sagemaker.network import NetworkConfig
from sagemaker.processing import FrameworkProcessor
from sagemaker.pytorch import PyTorch
from sagemaker.workflow.execution_variables import ExecutionVariables
from sagemaker.workflow.functions import Join
from sagemaker.workflow.parameters import ParameterFloat, ParameterInteger, ParameterString
from sagemaker.workflow.properties import PropertyFile
from sagemaker.workflow.steps import CacheConfig, ProcessingStep

from imgclf.metrics import METRIC_DEFINITIONS
from pipeline import tracking
from pipeline.config import Config
from pipeline.instances import volume_kms_key
from pipeline.package import SourceBundle
from pipeline.session import OfflinePipelineSession

#: How long a finished step stays reusable by step caching (ISO 8601 duration). Caching keys on a step's
#: arguments (AWS "Default cache key attributes by pipeline step type"), not on the bytes behind an S3 URI: put
#: new data under a new InputDataUri to make split, and through its new outputs every later step, run again.
CACHE_EXPIRE_AFTER = "P30D"
#: Where a processing job's container paths live (SageMaker's contract for ProcessingInput/Output LocalPath).
PROCESSING_ROOT = "/opt/ml/processing"


@dataclass(frozen=True)
class Parameters:
    """The pipeline's typed parameters; each has a default (from the config) so schedules can start it."""

    input_data_uri: ParameterString
    processing_instance_type: ParameterString
    training_instance_type: ParameterString
    training_instance_count: ParameterInteger
    accuracy_threshold: ParameterFloat
    model_approval_status: ParameterString

    @classmethod
    def from_config(cls, config: Config) -> Parameters:
        """Parameters named as in the definition (``InputDataUri``, ...) with the config's values as defaults."""
        return cls(
            input_data_uri=ParameterString("InputDataUri", default_value=config.input_data_uri),
            processing_instance_type=ParameterString(
                "ProcessingInstanceType", default_value=config.instances.processing_type
            ),
            training_instance_type=ParameterString(
                "TrainingInstanceType", default_value=config.instances.training_type
            ),
            training_instance_count=ParameterInteger(
                "TrainingInstanceCount", default_value=config.instances.training_count
            ),
            accuracy_threshold=ParameterFloat("AccuracyThreshold", default_value=config.evaluation.accuracy_threshold),
            model_approval_status=ParameterString(
                "ModelApprovalStatus", default_value=config.registry.approval_status
            ),
        )

    def as_list(self) -> list:
        return [
            self.input_data_uri,
            self.processing_instance_type,
            self.training_instance_type,
            self.training_instance_count,
            self.accuracy_threshold,
            self.model_approval_status,
        ]


class ReportingStep(NamedTuple):
    """A processing step and the PropertyFile of the JSON report it writes (what the quality gate reads with
    ``JsonGet``): what :func:`steps.debug.build` and :func:`steps.evaluate.build` return."""

    step: ProcessingStep
    report: PropertyFile


@dataclass(frozen=True)
class StepContext:
    """Shared inputs of the step builders. ``code`` is the packed ``entrypoints/`` (already content-hashed)."""

    config: Config
    session: OfflinePipelineSession
    parameters: Parameters
    code: SourceBundle
    cache: CacheConfig = field(
        default_factory=lambda: CacheConfig(enable_caching=True, expire_after=CACHE_EXPIRE_AFTER)
    )

    def job_name(self, step: str) -> str:
        """``<base_job_prefix>-<step>``: SageMaker appends a unique suffix per execution (custom job prefix)."""
        return f"{self.config.base_job_prefix}-{step}"

    def s3_uri(self, *parts: str) -> str:
        """Fixed S3 location under the pipeline's prefix, the same in every execution.

        Only for what is part of a step's cache key and must not change per execution (the code bundle, the
        training checkpoint and Debugger locations); never for a job's outputs (see :meth:`execution_uri`).
        """
        return self.config.s3_uri(*parts)

    def execution_uri(self, *parts: str) -> Join:
        """``s3://<bucket>/<prefix>/<pipeline>/<execution id>/<parts...>``: where one execution's outputs go.

        As the SDK's own default for a ProcessingOutput without destination (``ExecutionVariables.
        PIPELINE_EXECUTION_ID`` in the ``Join``, sagemaker/processing.py ``_normalize_outputs``): S3 keeps every
        object of earlier executions under a fixed prefix, so a fixed prefix would mix their datasets. Output
        locations are not part of SageMaker's cache key, so this does not defeat step caching; a cache hit hands
        on the earlier execution's output URIs through the step's properties.
        """
        return Join(on="/", values=[self.config.s3_uri(), ExecutionVariables.PIPELINE_EXECUTION_ID, *parts])

    def image_uri(self, scope: str, instance_type: str) -> str:
        """AWS PyTorch container for ``scope`` (``training`` or ``inference``) on ``instance_type`` (CPU/GPU)."""
        fw = self.config.framework
        return image_uris.retrieve(
            "pytorch",
            region=self.config.region,
            version=fw.version,
            py_version=fw.py_version,
            instance_type=instance_type,
            image_scope=scope,
        )

    @property
    def training_image(self) -> str:
        # Chosen from the config's instance type: the TrainingInstanceType parameter is only known at run time.
        # The GPU image also runs on CPU instances, so overriding the parameter with a CPU type still works.
        return self.image_uri("training", self.config.instances.training_type)

    @property
    def processing_image(self) -> str:
        return self.image_uri("training", self.config.instances.processing_type)

    @property
    def network_config(self) -> NetworkConfig | None:
        sec = self.config.security
        if not (sec.subnets or sec.enable_network_isolation or sec.encrypt_inter_container_traffic):
            return None
        return NetworkConfig(
            enable_network_isolation=sec.enable_network_isolation,
            security_group_ids=sec.security_group_ids or None,
            subnets=sec.subnets or None,
            encrypt_inter_container_traffic=sec.encrypt_inter_container_traffic,
        )

    @property
    def tags(self) -> list[dict[str, str]]:
        return [{"Key": key, "Value": value} for key, value in sorted(self.config.tags.items())]


def make_processor(ctx: StepContext, step: str) -> FrameworkProcessor:
    """A FrameworkProcessor on the PyTorch image that runs one script of the code bundle (shared by split,
    debug and evaluate). Instance type: the ``ProcessingInstanceType`` parameter; one instance."""
    config = ctx.config
    return FrameworkProcessor(
        estimator_cls=PyTorch,
        framework_version=config.framework.version,
        py_version=config.framework.py_version,
        image_uri=ctx.processing_image,
        role=config.role_arn,
        instance_type=ctx.parameters.processing_instance_type,
        instance_count=config.instances.processing_count,
        command=["python3"],
        volume_size_in_gb=config.instances.volume_size_gb,
        # no volume key for instance types with instance store: CreateProcessingJob refuses it (pipeline.instances)
        volume_kms_key=volume_kms_key(config.instances.processing_type, config.security.kms_key_id),
        output_kms_key=config.security.kms_key_id,
        max_runtime_in_seconds=config.instances.max_runtime_s,
        base_job_name=ctx.job_name(step),
        sagemaker_session=ctx.session,
        tags=ctx.tags,
        network_config=ctx.network_config,
        # Unbuffered output: the job log shows each line as it is printed (local mode streams it too).
        env={"PYTHONUNBUFFERED": "1", **tracking.job_environment(config, step)},
    )


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
#: The step whose fixed S3 prefix holds the managed Debugger's and profiler's output (``<pipeline>/train/debugger``,
#: ``.../profiler``), for the tune step's trials too: fixed, because DebugHookConfig is part of the cache key.
DEBUGGER_OUTPUT_STEP = "train"
#: The training channels (tune and train), each on the split step's output of the same name.
CHANNELS = ("train", "validation")


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
            s3_output_path=ctx.s3_uri(DEBUGGER_OUTPUT_STEP, "debugger"),
            collection_configs=[CollectionConfig(c, {"save_interval": interval}) for c in HOOK_COLLECTIONS],
        ),
        "rules": rules,
        "profiler_config": ProfilerConfig(
            s3_output_path=ctx.s3_uri(DEBUGGER_OUTPUT_STEP, "profiler"),
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


def channels(split: ProcessingStep, weights_uri: str | None = None) -> dict[str, TrainingInput]:
    """``{"train": ..., "validation": ...}`` TrainingInputs on the split step's outputs of the same names, plus
    ``weights`` (``SM_CHANNEL_WEIGHTS``: a .pth state_dict, ``training.weights_uri``) when given."""
    outputs = split.properties.ProcessingOutputConfig.Outputs
    inputs = {name: TrainingInput(s3_data=outputs[name].S3Output.S3Uri) for name in CHANNELS}
    if weights_uri:
        inputs["weights"] = TrainingInput(s3_data=weights_uri)
    return inputs
