"""Lambda handler of the pipeline's ``deploy`` step: create or update a real-time endpoint from a model package.

Event (the LambdaStep's inputs)::

    {"model_package_arn": "arn:aws:sagemaker:<region>:<account>:model-package/<group>/<version>",
     "endpoint_name": "image-classification", "instance_type": "ml.m5.large",
     "initial_instance_count": 1, "role_arn": "arn:aws:iam::<account>:role/<model execution role>",
     "network_isolation": "false", "kms_key_id": "<optional>", "subnets": "<optional, comma-separated>",
     "security_group_ids": "<optional, comma-separated>"}

Returns ``{"statusCode": 200, "endpoint_name": ..., "status": "Creating" | "Updating" | "Unchanged" | "Skipped",
"model_name": ..., "endpoint_config_name": ...}``. A package whose approval status is not ``Approved`` is not
deployed (``Skipped``): approving it in the Model Registry and re-running the step deploys it.

Names are derived from the package version, so a retry of the same event reuses what the first try created:
model ``<endpoint>-v<version>``, endpoint config ``<endpoint>-v<version>-<hash of instance type and count>``.
boto3 only (it is in the Lambda runtime); nothing else from this repository is imported.
"""

from __future__ import annotations

import hashlib
import logging

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

log = logging.getLogger()
log.setLevel(logging.INFO)

REQUIRED = ("model_package_arn", "endpoint_name", "instance_type", "role_arn")
#: botocore's standard retry mode: throttling and transient errors retried with exponential backoff.
RETRY_CONFIG = Config(retries={"mode": "standard", "total_max_attempts": 5})


def _csv(value) -> list[str]:
    return [item.strip() for item in str(value or "").split(",") if item.strip()]


def _missing(error: ClientError) -> bool:
    message = error.response.get("Error", {}).get("Message", "").lower()
    return error.response.get("Error", {}).get("Code") in ("ValidationException", "ResourceNotFound") and (
        "could not find" in message or "not found" in message or "does not exist" in message
    )


def _names(event: dict, version: str) -> tuple[str, str]:
    endpoint = event["endpoint_name"]
    shape = f"{event['instance_type']}:{int(event.get('initial_instance_count', 1))}"
    digest = hashlib.sha256(f"{event['model_package_arn']}|{shape}".encode()).hexdigest()[:8]
    return f"{endpoint}-v{version}"[:63], f"{endpoint}-v{version}-{digest}"[:63]


def deploy(event: dict, sagemaker=None) -> dict:
    """Create or update the endpoint named in ``event`` from its model package; see the module docstring.

    Raises ValueError when a required key is missing (the step fails with that message).
    """
    missing = [key for key in REQUIRED if not event.get(key)]
    if missing:
        raise ValueError(f"deploy event lacks {', '.join(missing)}")
    sagemaker = sagemaker or boto3.client("sagemaker", config=RETRY_CONFIG)
    package = sagemaker.describe_model_package(ModelPackageName=event["model_package_arn"])
    endpoint = event["endpoint_name"]
    approval = package.get("ModelApprovalStatus")
    if approval != "Approved":
        log.info("model package %s is %s: not deployed", event["model_package_arn"], approval)
        return {"statusCode": 200, "endpoint_name": endpoint, "status": "Skipped",
                "reason": f"model package approval status is {approval}, not Approved"}  # fmt: skip
    version = str(package.get("ModelPackageVersion") or event["model_package_arn"].rsplit("/", 1)[-1])
    model_name, config_name = _names(event, version)

    try:
        sagemaker.describe_model(ModelName=model_name)
    except ClientError as error:
        if not _missing(error):
            raise
        isolated = str(event.get("network_isolation", "false")).lower() == "true"
        model_security: dict = {"EnableNetworkIsolation": isolated}
        if _csv(event.get("subnets")):
            model_security["VpcConfig"] = {"Subnets": _csv(event["subnets"]),
                                           "SecurityGroupIds": _csv(event.get("security_group_ids"))}
        sagemaker.create_model(
            ModelName=model_name,
            ExecutionRoleArn=event["role_arn"],
            Containers=[{"ModelPackageName": event["model_package_arn"]}],
            **model_security,
        )
    try:
        sagemaker.describe_endpoint_config(EndpointConfigName=config_name)
    except ClientError as error:
        if not _missing(error):
            raise
        volume_key = {"KmsKeyId": event["kms_key_id"]} if event.get("kms_key_id") else {}
        sagemaker.create_endpoint_config(
            EndpointConfigName=config_name,
            **volume_key,
            ProductionVariants=[{
                "VariantName": "AllTraffic",
                "ModelName": model_name,
                "InstanceType": event["instance_type"],
                "InitialInstanceCount": int(event.get("initial_instance_count", 1)),
            }],
        )  # fmt: skip

    try:
        current = sagemaker.describe_endpoint(EndpointName=endpoint)
    except ClientError as error:
        if not _missing(error):
            raise
        sagemaker.create_endpoint(EndpointName=endpoint, EndpointConfigName=config_name)
        status = "Creating"
    else:
        if current.get("EndpointConfigName") == config_name:
            status = "Unchanged"
        else:
            sagemaker.update_endpoint(EndpointName=endpoint, EndpointConfigName=config_name)
            status = "Updating"
    log.info("endpoint %s: %s with %s", endpoint, status, config_name)
    return {"statusCode": 200, "endpoint_name": endpoint, "status": status, "model_name": model_name,
            "endpoint_config_name": config_name}  # fmt: skip


def handler(event, context):
    """AWS Lambda entry point (``deploy_endpoint.handler``): :func:`deploy` with a default boto3 client."""
    return deploy(event)
