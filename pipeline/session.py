"""An offline ``PipelineSession``: builds the definition with no AWS call, no credentials and no telemetry.

Three things in SDK 2.257.7 would reach AWS while a definition is built, and this session stops each:

- ``Session.default_bucket()`` calls S3 (to create or check the bucket) even when a bucket name is given:
  overridden to return the configured bucket.
- ``FrameworkProcessor`` uploads its generated ``runproc.sh`` at definition time: ``upload_string_as_file_body``
  keeps the bytes in :attr:`OfflinePipelineSession.uploads` instead (``upsert`` uploads them; the local executor
  can write them into its store), keyed by their S3 URI, which the SDK derives from the content hash.
- The SDK's telemetry sends a request from decorated calls: turned off with ``TelemetryOptOut`` in the session's
  own SDK config (passing the config also stops the SDK from reading ``~/.config/sagemaker/config.yaml``, whose
  defaults would otherwise make the definition depend on the machine).

As a guard, every botocore request of this session raises :class:`OfflineError` before it is sent.
"""

from __future__ import annotations

import logging
import os
import traceback
import warnings

# Kept here although pipeline.cli.configure_logging sets the same: this must run before the SDK is imported, and
# code that imports this module without the CLI (tests, bench, a notebook) never calls configure_logging. The
# SDK's "sagemaker.config" logger prints INFO lines to stdout on import unless a level and a handler are already
# set, which would corrupt JSON written to stdout.
os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
logging.getLogger("sagemaker.config").setLevel(logging.WARNING)
if not logging.getLogger("sagemaker.config").handlers:
    logging.getLogger("sagemaker.config").addHandler(logging.NullHandler())

import boto3  # noqa: E402
import sagemaker.utils  # noqa: E402
from sagemaker.workflow.pipeline_context import PipelineSession  # noqa: E402

#: Read by the SDK's ``EstimatorBase.fit`` (see :class:`quiet_sdk`) and set by ``mlflow.set_tracking_uri``.
MLFLOW_TRACKING_URI = "MLFLOW_TRACKING_URI"

#: SDK defaults config (schema: sagemaker.config.config_schema) with telemetry off and nothing else.
SDK_CONFIG = {"SchemaVersion": "1.0", "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": True}}}}


class OfflineError(RuntimeError):
    """The offline session was asked to call AWS (a bug in the builder: report the operation named)."""


def _refuse_request(request, event_name: str = "", **_kwargs):
    # event_name is "before-send.<service>.<Operation>": name the operation and the code that asked for it, so
    # that the builder bug is found from the message alone.
    operation = event_name.rpartition(".")[2] or "?"
    caller = next((f"{frame.filename}:{frame.lineno} {frame.name}" for frame in reversed(traceback.extract_stack())
                   if "botocore" not in frame.filename and "boto3" not in frame.filename
                   and frame.filename != __file__), "?")
    raise OfflineError(f"the offline pipeline session refused an AWS request ({operation}) to {request.url}, "
                       f"asked for by {caller}")


class OfflinePipelineSession(PipelineSession):
    """PipelineSession that never calls AWS. ``uploads`` maps S3 URI -> bytes the SDK wanted to upload."""

    def __init__(self, region: str, bucket: str, prefix: str = ""):
        """Create the session for ``region`` (e.g. ``us-east-1``), writing under ``s3://bucket/prefix``.

        No credentials are needed: botocore clients are created but every request is refused.
        """
        # Static placeholder credentials: botocore resolves no credential chain (no IMDS probe on a laptop).
        boto_session = boto3.Session(
            region_name=region, aws_access_key_id="offline", aws_secret_access_key="offline"
        )
        boto_session.events.register("before-send", _refuse_request)
        self.uploads: dict[str, bytes] = {}
        super().__init__(
            boto_session=boto_session,
            default_bucket=bucket,
            sagemaker_config=SDK_CONFIG,
            default_bucket_prefix=prefix or None,
        )

    def default_bucket(self) -> str:
        """The configured bucket, with no S3 call (the base class creates or checks the bucket)."""
        return self._default_bucket_name_override

    def upload_string_as_file_body(self, body, bucket, key, kms_key=None) -> str:
        """Keep ``body`` for ``upsert`` instead of uploading it; return its S3 URI."""
        uri = f"s3://{bucket}/{key}"
        self.uploads[uri] = body.encode("utf-8") if isinstance(body, str) else bytes(body)
        return uri

    def upload_data(self, path, bucket=None, key_prefix="data", callback=None, extra_args=None):
        """Refused: every local path must be packed by ``pipeline.package`` and referenced by S3 URI."""
        raise OfflineError(f"the builder asked the SDK to upload {path}; reference it by S3 URI instead")

    def account_id(self) -> str:
        """Refused: the definition must not depend on the caller's account."""
        raise OfflineError("the builder asked for the AWS account id (an STS call); use ARNs from the config")


_validate_sagemaker_config = sagemaker.utils.validate_sagemaker_config


def _validate_unless_ours(sagemaker_config: dict | None = None) -> None:
    # SDK_CONFIG was validated once at import; every other config is validated as the SDK does.
    if sagemaker_config is not SDK_CONFIG:
        _validate_sagemaker_config(sagemaker_config)


# SDK_CONFIG must stay valid: checked once here rather than on every lookup.
_validate_sagemaker_config(SDK_CONFIG)


class quiet_sdk:  # noqa: N801  (used as a context manager, like contextlib's helpers)
    """Build-time settings of the SDK, undone on exit.

    - Silences its chatter (``No Wait, No Logs``, ``Uploaded ...``, pipeline-variable notes), which describes
      what the offline build does on purpose; errors still raise.
    - Skips re-validating :data:`SDK_CONFIG`: SDK 2.257.7 validates the session's config with jsonschema (and
      re-checks its own schema) on every config lookup, and a build makes many, so that validation would take
      most of a build's time; our own config is validated once, at import.
    - Hides ``MLFLOW_TRACKING_URI`` of the caller's environment: SDK 2.257.7's ``EstimatorBase.fit`` sets
      ``wait=True`` when that variable is set and the estimator has network isolation, which under a
      ``PipelineSession`` describes a training job that does not exist (an AWS call at build time). The jobs'
      tracking server comes from ``tracking.mlflow_uri`` in the config, never from the builder's shell.
    """

    def __enter__(self):
        sagemaker.utils.validate_sagemaker_config = _validate_unless_ours
        self._mlflow_uri = os.environ.pop(MLFLOW_TRACKING_URI, None)
        self._logger = logging.getLogger("sagemaker")
        self._level = self._logger.level
        self._logger.setLevel(logging.ERROR)
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.simplefilter("ignore", UserWarning)
        return self

    def __exit__(self, *exc_info):
        sagemaker.utils.validate_sagemaker_config = _validate_sagemaker_config
        if self._mlflow_uri is not None:
            os.environ[MLFLOW_TRACKING_URI] = self._mlflow_uri
        self._warnings.__exit__(*exc_info)
        self._logger.setLevel(self._level)
        return False
