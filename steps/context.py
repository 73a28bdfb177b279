"""What every step builder needs: the config, the offline session, the pipeline parameters, the code bundle.

Built once by :func:`pipeline.build.get_pipeline` and handed to each ``steps/<step>.py`` builder, so a builder
is a pure function of (context, upstream steps) and the builders agree on paths, images and parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sagemaker import image_uris
from sagemaker.network import NetworkConfig
from sagemaker.workflow.execution_variables import ExecutionVariables
from sagemaker.workflow.functions import Join
from sagemaker.workflow.parameters import ParameterFloat, ParameterInteger, ParameterString
from sagemaker.workflow.steps import CacheConfig

from pipeline.config import Config
from pipeline.package import SourceBundle
from pipeline.session import OfflinePipelineSession

#: How long a finished step stays reusable by step caching (ISO 8601 duration). Caching keys on a step's
#: arguments (AWS "Default cache key attributes by pipeline step type"), not on the bytes behind an S3 URI: put
#: new data under a new InputDataUri to make split, and through its new outputs every later step, run again.
CACHE_EXPIRE_AFTER = "P30D"


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
