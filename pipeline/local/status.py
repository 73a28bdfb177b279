"""The status vocabularies of local mode, spelled as SageMaker spells them, and the local account's ARNs.

``StepStatus`` is a step's ``StepStatus`` and an execution's ``PipelineExecutionStatus`` (ListPipelineExecutionSteps
and DescribePipelineExecution: Executing, Stopping, Stopped, Failed, Succeeded) plus two of local mode's own:
``Skipped`` (a branch not taken, or a step the run was told to skip) and ``NotStarted`` (a step the execution never
reached). ``JobStatus`` is a training or processing job's status (DescribeTrainingJob: InProgress, Completed,
Failed, Stopping, Stopped). Both are ``str`` enums: they compare equal to, and serialise as, the plain strings
that execution records and AWS responses hold. ``StepOutcome`` is how a step's run ended, as its handler (in
:mod:`pipeline.local.executor`, or :mod:`pipeline.local.deploy` for the deploy Lambda) returns it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

#: Local mode's region and account: a fixed pair, so that local ARNs have SageMaker's shape and never name a real
#: account. (moto's default account is 123456789012; the AWS tests use that one, never this.)
REGION = "us-east-1"
ACCOUNT = "000000000000"


class StepStatus(str, Enum):
    """A pipeline step's or execution's status."""

    __str__ = str.__str__  # f"{status}" is the plain value, as with Python 3.11's StrEnum (3.10 is supported)

    EXECUTING = "Executing"
    STOPPING = "Stopping"
    STOPPED = "Stopped"
    FAILED = "Failed"
    SUCCEEDED = "Succeeded"
    SKIPPED = "Skipped"
    NOT_STARTED = "NotStarted"

    @property
    def done(self) -> bool:
        """True once the step will change no more (every status but Executing and Stopping)."""
        return self not in (StepStatus.EXECUTING, StepStatus.STOPPING)


class JobStatus(str, Enum):
    """A training, processing or tuning job's status."""

    __str__ = str.__str__

    IN_PROGRESS = "InProgress"
    COMPLETED = "Completed"
    FAILED = "Failed"
    STOPPING = "Stopping"
    STOPPED = "Stopped"


@dataclass
class StepOutcome:
    """How one step's run ended: the fields it sets on the step's record in execution.json (docs/local-mode.md).

    ``cache_source`` is the ``PipelineExecutionArn`` of the execution whose result a cache hit reused (the record's
    ``CacheHitResult.SourcePipelineExecutionArn``); ``metadata`` is a Condition's or Fail step's ``Metadata``.
    """

    status: StepStatus
    properties: dict = field(default_factory=dict)
    failure_reason: str | None = None
    detail: str = ""
    jobs: list[dict] = field(default_factory=list)
    cache_source: str | None = None
    metadata: dict | None = None

    def record_fields(self) -> dict:
        """The step record's fields, by their execution.json names (``Metadata`` only when there is some)."""
        fields = {
            "StepStatus": self.status,
            "FailureReason": self.failure_reason,
            "Properties": self.properties,
            "CacheHitResult": {"SourcePipelineExecutionArn": self.cache_source} if self.cache_source else None,
            "Jobs": self.jobs,
            "Detail": self.detail,
        }
        return fields | ({"Metadata": self.metadata} if self.metadata is not None else {})


def local_arn(resource: str) -> str:
    """A local ARN in SageMaker's shape: ``local_arn("training-job/x")`` is
    ``arn:aws:sagemaker:us-east-1:000000000000:training-job/x``."""
    return f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:{resource}"
