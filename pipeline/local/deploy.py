"""The ``deploy`` LambdaStep, run locally: what ``entrypoints/deploy_endpoint.py`` does in AWS, on this machine.

In AWS the Lambda creates or updates a SageMaker endpoint from the registered model package. Locally the step
looks the package up in the local registry (checking the archive's SHA-256), and, when it is ``Approved``,
starts the local endpoint on the package's ``model.tar.gz`` (through the archive's own ``code/inference.py``),
waits for ``GET /ping`` to answer 200, sends nothing else and stops it: the step proves the package serves.
``run-local --demo`` starts it again afterwards and keeps it up while it sends test images.

Outputs (the LambdaStep's ``OutputParameters``, as the real handler returns them): ``endpoint_name``,
``status`` (``InService`` locally once /ping answered, ``Unchanged`` when the endpoint already serves the same
model artifacts, ``Skipped`` for a package that is not Approved), ``reason`` (why Unchanged or Skipped; empty
otherwise), ``endpoint_url`` and ``model_package_arn``.

What the deploy step last put on each endpoint is recorded in ``<store>/_deployments/<endpoint name>.json``
(``ModelDataUrl``, its SHA-256, the package ARN). A package whose ``ModelDataUrl`` and archive SHA-256 equal the
recorded ones (a scheduled run with no new data: the training step was a cache hit, RegisterModel made a new
version of the same artifacts) leaves the endpoint untouched: no restart, status ``Unchanged``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

from pipeline.local.registry import resolve_model_package
from pipeline.local.status import StepOutcome, StepStatus
from pipeline.local.store import Store, atomic_write_json
from pipeline.serving.server import EndpointStartError, start_in_background

_PACKAGE_ARN = re.compile(r":model-package/[^/]+/\d+$")
#: Not ``_endpoints``: that folder holds the long-lived stage endpoints' state (pipeline.local.stages).
DEPLOYMENTS_FOLDER = "_deployments"


def _outputs(spec: dict, values: dict) -> dict:
    declared = [o.get("OutputName") for o in spec.get("OutputParameters") or []]
    return {name: str(values.get(name, "")) for name in declared} | {k: str(v) for k, v in values.items()}


def _read_json(path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def run_deploy(
    step_name: str, spec: dict, arguments: dict, *, store: Store, jobs_dir: Path, report: Callable[[str], None]
) -> StepOutcome:
    """Run the deploy LambdaStep ``step_name`` (its definition ``spec``, its resolved ``arguments``).

    The endpoint's log goes to ``jobs_dir/<endpoint name>-endpoint.log``; ``report(detail)`` shows progress.
    """
    arn = arguments.get("model_package_arn") or next(
        (v for v in arguments.values() if isinstance(v, str) and _PACKAGE_ARN.search(v)), None
    )
    if not arn:
        return StepOutcome(
            StepStatus.FAILED,
            failure_reason=f"Lambda {step_name}: no model package ARN among its inputs "
            f"({', '.join(arguments)}); local mode runs the deploy function only",
        )
    endpoint_name = str(arguments.get("endpoint_name") or step_name)
    package = resolve_model_package(store.root, arn)
    description = package["description"]
    values = {"endpoint_name": endpoint_name, "model_package_arn": arn}
    base = {
        "FunctionArn": spec.get("FunctionArn"),
        "Arguments": arguments,
        "ModelDataUrl": str(package["model_path"]),
        "ModelDataSha256": package["sha256"],
    }
    if description.get("ModelApprovalStatus") != "Approved":
        values["status"] = "Skipped"
        reason = f"model package approval status is {description.get('ModelApprovalStatus')}, not Approved"
        values["reason"] = reason  # the AWS handler's output of the same name
        properties = {**base, "OutputParameters": _outputs(spec, values), "Reason": reason}
        return StepOutcome(StepStatus.SUCCEEDED, properties, detail=reason)
    record_path = store.root / DEPLOYMENTS_FOLDER / f"{re.sub(r'[^a-zA-Z0-9-]', '-', endpoint_name)}.json"
    model_data_url = description["InferenceSpecification"]["Containers"][0]["ModelDataUrl"]
    serving = _read_json(record_path)
    if serving.get("ModelDataUrl") == model_data_url and serving.get("ModelDataSha256") == package["sha256"]:
        values["status"] = "Unchanged"
        reason = f"{endpoint_name} already serves {model_data_url} (from {serving.get('ModelPackageArn')})"
        values["reason"] = reason
        properties = {**base, "OutputParameters": _outputs(spec, values), "Reason": reason}
        return StepOutcome(StepStatus.SUCCEEDED, properties, detail=reason)
    endpoint = start_in_background(package["model_path"], sha256=package["sha256"], model_version=arn,
                                   log_path=jobs_dir / f"{endpoint_name}-endpoint.log", wait=False)
    report(f"starting endpoint {endpoint_name} on {endpoint.url}")
    try:
        with endpoint:
            endpoint.wait_until_healthy()
            values.update(status="InService", endpoint_url=endpoint.url)
    except EndpointStartError as error:
        return StepOutcome(StepStatus.FAILED, failure_reason=f"endpoint {endpoint_name}: {str(error).splitlines()[0]}")
    atomic_write_json(record_path, {"EndpointName": endpoint_name, "ModelPackageArn": arn,
                                    "ModelDataUrl": model_data_url, "ModelDataSha256": package["sha256"]})  # fmt: skip
    serve = f"python -m pipeline serve --model {arn} --store {store.root}"
    properties = {
        **base,
        "OutputParameters": _outputs(spec, values),
        "ServeCommand": serve,
        "EndpointLog": str(endpoint.log_path),
    }
    return StepOutcome(
        StepStatus.SUCCEEDED, properties, detail=f"{endpoint_name} answered /ping on {endpoint.url} (stopped)"
    )
