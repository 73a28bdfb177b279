"""The local model registry: versions, approval, metrics, SHA-256 of the archive."""

from __future__ import annotations

import pytest

from pipeline.local.registry import ModelRegistry, RegistryError, resolve_model_package
from pipeline.local.store import Store


def _request(model_uri: str, approval: str | None = "Approved") -> dict:
    request = {
        "ModelPackageGroupName": "digits",
        "InferenceSpecification": {
            "Containers": [
                {
                    "Image": "pytorch-inference:2.6-cpu",
                    "ModelDataUrl": model_uri,
                    "Environment": {"SAGEMAKER_PROGRAM": "inference.py"},
                }
            ],
            "SupportedContentTypes": ["image/png"],
            "SupportedResponseMIMETypes": ["application/json"],
        },
        "ModelMetrics": {
            "ModelQuality": {
                "Statistics": {"ContentType": "application/json", "S3Uri": "s3://b/eval/evaluation.json"}
            }
        },
    }
    if approval:
        request["ModelApprovalStatus"] = approval
    return request


@pytest.fixture
def store(tmp_path) -> Store:
    store = Store(tmp_path)
    store.put_bytes("s3://b/models/a/output/model.tar.gz", b"archive a")
    store.put_bytes("s3://b/models/b/output/model.tar.gz", b"archive b")
    store.put_json(
        "s3://b/eval/evaluation.json", {"multiclass_classification_metrics": {"accuracy": {"value": 0.98}}}
    )
    return store


def test_versions_approval_and_latest(store):
    registry = ModelRegistry(store)
    first = registry.create_model_package(_request("s3://b/models/a/output/model.tar.gz"))
    second = registry.create_model_package(_request("s3://b/models/b/output/model.tar.gz", approval=None))
    assert (first["ModelPackageVersion"], second["ModelPackageVersion"]) == (1, 2)
    assert first["ModelPackageArn"].endswith(":model-package/digits/1")
    assert second["ModelApprovalStatus"] == "PendingManualApproval"  # SageMaker's default
    metrics = registry.model_metrics(first)["ModelQuality.Statistics"]
    assert metrics["multiclass_classification_metrics"]["accuracy"]["value"] == 0.98
    assert registry.latest("digits")["ModelPackageVersion"] == 1  # newest Approved
    registry.update_model_package(second["ModelPackageArn"], "Approved")
    assert registry.latest()["ModelPackageVersion"] == 2
    assert registry.describe_model_package("digits/2")["ModelApprovalStatus"] == "Approved"
    assert [p["ModelPackageVersion"] for p in registry.list_model_packages("digits", "Approved")] == [1, 2]
    assert registry.list_model_package_groups() == ["digits"]


def test_metrics_are_read_through_the_registered_uri_as_in_sagemaker(store):
    """A package keeps the URI of its report, not a copy: a report overwritten later shows in the old package."""
    registry = ModelRegistry(store)
    shared = registry.create_model_package(_request("s3://b/models/a/output/model.tar.gz"))
    own_request = _request("s3://b/models/b/output/model.tar.gz")
    own_request["ModelMetrics"]["ModelQuality"]["Statistics"]["S3Uri"] = "s3://b/run-2/evaluation.json"
    store.put_json("s3://b/run-2/evaluation.json", {"multiclass_classification_metrics": {"accuracy": {"value": 0.5}}})
    own = registry.create_model_package(own_request)
    store.put_json("s3://b/eval/evaluation.json", {"multiclass_classification_metrics": {"accuracy": {"value": 0.1}}})

    def accuracy(package):
        return registry.model_metrics(package)["ModelQuality.Statistics"]["multiclass_classification_metrics"][
            "accuracy"]["value"]

    assert accuracy(registry.describe_model_package(shared["ModelPackageArn"])) == 0.1  # not 0.98 any more
    assert accuracy(registry.describe_model_package(own["ModelPackageArn"])) == 0.5


def test_resolve_checks_the_archive_sha256(store):
    registry = ModelRegistry(store)
    package = registry.create_model_package(_request("s3://b/models/a/output/model.tar.gz"))
    resolved = resolve_model_package(store.root, "latest")
    assert resolved["model_path"] == store.path("s3://b/models/a/output/model.tar.gz")
    assert resolved["sha256"] == package["ModelDataSha256"]["s3://b/models/a/output/model.tar.gz"]
    store.put_bytes("s3://b/models/a/output/model.tar.gz", b"tampered")
    with pytest.raises(RegistryError, match="SHA-256 differs"):
        resolve_model_package(store.root, package["ModelPackageArn"])


def test_bad_requests_name_the_problem(store):
    registry = ModelRegistry(store)
    with pytest.raises(RegistryError, match="no model archive"):
        registry.create_model_package(_request("s3://b/models/missing.tar.gz"))
    with pytest.raises(RegistryError, match="ModelApprovalStatus 'Maybe'"):
        registry.create_model_package(_request("s3://b/models/a/output/model.tar.gz", approval="Maybe"))
    with pytest.raises(RegistryError, match="not found"):
        registry.describe_model_package("digits/9")
    with pytest.raises(RegistryError, match="no Approved model package"):
        registry.latest("digits")
