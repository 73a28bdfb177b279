"""The status vocabularies of local mode, spelled as SageMaker spells them, and the local account's ARNs.

``StepStatus`` is a step's ``StepStatus`` and an execution's ``PipelineExecutionStatus`` (ListPipelineExecutionSteps
and DescribePipelineExecution: Executing, Stopping, Stopped, Failed, Succeeded) plus two of local mode's own:
``Skipped`` (a branch not taken, or a step the run was told to skip) and ``NotStarted`` (a step the execution never
reached). ``JobStatus`` is a training or processing job's status (DescribeTrainingJob: InProgress, Completed,
Failed, Stopping, Stopped). Both are ``str`` enums: they compare equal to, and serialise as, the plain strings
that execution records and AWS responses hold.
"""

from __future__ import annotations

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


def local_arn(resource: str) -> str:
    """A local ARN in SageMaker's shape: ``local_arn("training-job/x")`` is
    ``arn:aws:sagemaker:us-east-1:000000000000:training-job/x``."""
    return f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:{resource}"
