"""A local SageMaker Model Registry kept in the store, shaped like the SageMaker API.

Files (JSON, written atomically; versions are numbered under a per-group ``fcntl`` lock)::

    <store>/_registry/<group>/group.json        DescribeModelPackageGroup
    <store>/_registry/<group>/<version>.json    DescribeModelPackage (ModelPackageVersion 1, 2, ...)

A model package holds what ``CreateModelPackage`` (the ``RegisterModel`` step) gives: ``InferenceSpecification``
(containers with image, environment and ``ModelDataUrl``, content types, instance types), ``ModelApprovalStatus``,
``ModelMetrics`` (S3 URIs of the reports), plus one local field: ``ModelDataSha256`` (SHA-256 of each container's
``model.tar.gz`` at registration, so a server can check that it serves what was registered). As in SageMaker, a
package keeps only the URIs of its metrics (``MetricsSource.S3Uri``): :meth:`ModelRegistry.model_metrics` reads
what is there now, so a report overwritten by a later execution shows in every package that points at it.

``_registry`` cannot clash with a bucket: bucket names start with a letter or digit.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import re
import time
from pathlib import Path
from typing import Any

from pipeline.hashing import sha256_of
from pipeline.local.status import local_arn
from pipeline.local.store import Store, StoreError, atomic_write_json

REGISTRY_FOLDER = "_registry"
APPROVAL_STATUSES = ("Approved", "Rejected", "PendingManualApproval")
# Model package group names: https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_CreateModelPackageGroup.html
GROUP_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
_ARN = re.compile(r"^arn:aws[a-z-]*:sagemaker:[^:]*:[^:]*:model-package/(?P<group>[^/]+)/(?P<version>\d+)$")


class RegistryError(Exception):
    """An unknown group or version, a bad name or approval status (the message names it and the valid ones)."""


def model_package_arn(group: str, version: int) -> str:
    """``arn:aws:sagemaker:<region>:<account>:model-package/<group>/<version>`` (SageMaker's ARN shape)."""
    return local_arn(f"model-package/{group}/{version}")


class ModelRegistry:
    """Model package groups and versions under ``<store>/_registry``."""

    def __init__(self, store: Store | str | Path):
        self.store = store if isinstance(store, Store) else Store(store)
        self.root = self.store.root / REGISTRY_FOLDER

    def _group_dir(self, group: str) -> Path:
        if not GROUP_NAME.match(group or ""):
            raise RegistryError(f"{group!r} is not a valid model package group name (1-63 letters, digits and '-')")
        return self.root / group

    @contextlib.contextmanager
    def _locked(self, group: str):
        folder = self._group_dir(group)
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / ".lock", "a") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            yield folder

    # -- groups ---------------------------------------------------------------------------------------------
    def create_model_package_group(self, name: str, description: str = "") -> dict:
        """Create the group ``name`` if missing (idempotent). Returns DescribeModelPackageGroup."""
        with self._locked(name) as folder:
            path = folder / "group.json"
            if path.is_file():
                return json.loads(path.read_text())
            group = {
                "ModelPackageGroupName": name,
                "ModelPackageGroupArn": local_arn(f"model-package-group/{name}"),
                "ModelPackageGroupDescription": description,
                "CreationTime": time.time(),
                "ModelPackageGroupStatus": "Completed",
            }
            atomic_write_json(path, group)
            return group

    def list_model_package_groups(self) -> list[str]:
        """Names of every group, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / "group.json").is_file())

    # -- packages -------------------------------------------------------------------------------------------
    def create_model_package(self, request: dict) -> dict:
        """Register a version from resolved ``CreateModelPackage`` arguments (the RegisterModel step's).

        ``request`` needs ``ModelPackageGroupName`` and ``InferenceSpecification.Containers[].ModelDataUrl``;
        ``ModelApprovalStatus`` defaults to ``PendingManualApproval`` as in SageMaker. The group is created if
        missing (as the SDK's RegisterModel step does). Returns DescribeModelPackage of the new version.

        Raises:
            RegistryError: no group name, a bad approval status, or a container without its model.tar.gz.
        """
        group = request.get("ModelPackageGroupName")
        if not group:
            raise RegistryError("CreateModelPackage: ModelPackageGroupName is required for a versioned model package")
        approval = request.get("ModelApprovalStatus") or "PendingManualApproval"
        if approval not in APPROVAL_STATUSES:
            raise RegistryError(f"ModelApprovalStatus {approval!r}: expected one of {', '.join(APPROVAL_STATUSES)}")
        containers = (request.get("InferenceSpecification") or {}).get("Containers") or []
        if not containers:
            raise RegistryError("CreateModelPackage: InferenceSpecification.Containers is empty")
        digests = {}
        for container in containers:
            url = container.get("ModelDataUrl")
            if not url:
                continue
            path = self.store.path(url)
            if not path.is_file():
                raise RegistryError(f"ModelDataUrl {url}: no model archive in the store (expected {path})")
            digests[url] = sha256_of(path)
        self.create_model_package_group(group)
        with self._locked(group) as folder:
            versions = [int(p.stem) for p in folder.glob("*.json") if p.stem.isdigit()]
            version = max(versions, default=0) + 1
            description = {key: value for key, value in request.items() if key not in ("ModelPackageName",)}
            description.update(
                ModelPackageGroupName=group,
                ModelPackageVersion=version,
                ModelPackageArn=model_package_arn(group, version),
                ModelPackageStatus="Completed",
                ModelPackageStatusDetails={"ValidationStatuses": [], "ImageScanStatuses": []},
                ModelApprovalStatus=approval,
                CreationTime=time.time(),
                LastModifiedTime=time.time(),
                ModelDataSha256=digests,
            )
            atomic_write_json(folder / f"{version}.json", description)
        return description

    def model_metrics(self, description: dict) -> dict[str, Any]:
        """``{"<section>.<kind>": parsed JSON}`` of each ``ModelMetrics`` report, read from the store now.

        Sections: ModelQuality, ModelDataQuality, Bias, Explainability (CreateModelPackage's ModelMetrics). A
        report that is gone or not JSON is left out.
        """
        metrics = {}
        for section in ("ModelQuality", "ModelDataQuality", "Bias", "Explainability"):
            for kind, source in ((description.get("ModelMetrics") or {}).get(section) or {}).items():
                if isinstance(source, dict) and source.get("S3Uri"):
                    with contextlib.suppress(StoreError):
                        metrics[f"{section}.{kind}"] = self.store.read_json(source["S3Uri"])
        return metrics

    def describe_model_package(self, name: str) -> dict:
        """DescribeModelPackage of an ARN (``...:model-package/<group>/<version>``) or ``<group>/<version>``.

        Raises:
            RegistryError: malformed name or no such version (lists the group's versions).
        """
        match = _ARN.match(name) or re.match(r"^(?P<group>[^/:]+)/(?P<version>\d+)$", name)
        if not match:
            raise RegistryError(f"{name!r}: expected a model package ARN or <group>/<version>")
        group, version = match.group("group"), int(match.group("version"))
        path = self._group_dir(group) / f"{version}.json"
        if not path.is_file():
            known = [p["ModelPackageVersion"] for p in self.list_model_packages(group)]
            raise RegistryError(f"model package {group}/{version} not found (versions of {group}: {known or 'none'})")
        return json.loads(path.read_text())

    def list_model_packages(self, group: str, approval_status: str | None = None) -> list[dict]:
        """Every version of ``group`` (oldest first), optionally only those with ``approval_status``."""
        folder = self._group_dir(group)
        if not folder.is_dir():
            return []
        packages = [json.loads(p.read_text()) for p in folder.glob("*.json") if p.stem.isdigit()]
        packages.sort(key=lambda p: p["ModelPackageVersion"])
        return [p for p in packages if approval_status in (None, p.get("ModelApprovalStatus"))]

    def latest(self, group: str | None = None, approval_status: str | None = "Approved") -> dict:
        """The newest version with ``approval_status`` (None: any) in ``group`` (None: the only group there is).

        Raises:
            RegistryError: no such package, or several groups and none named.
        """
        if group is None:
            groups = self.list_model_package_groups()
            if len(groups) != 1:
                raise RegistryError(f"the registry at {self.root} has groups {groups or 'none'}: name one")
            group = groups[0]
        packages = self.list_model_packages(group, approval_status)
        if not packages:
            status = f" {approval_status}" if approval_status else ""
            raise RegistryError(
                f"no{status} model package in group {group!r} (registry {self.root}); run run-local first"
            )
        return packages[-1]

    def update_model_package(self, name: str, approval_status: str, approval_description: str | None = None) -> dict:
        """UpdateModelPackage: set ``ModelApprovalStatus`` (and ``ApprovalDescription``). Returns the new description.

        SageMaker allows any of the three statuses from any other (a Rejected version can be approved later); the
        description records who decided and why (https://docs.aws.amazon.com/sagemaker/latest/APIReference/
        API_UpdateModelPackage.html: ApprovalDescription, at most 1024 characters).

        Raises:
            RegistryError: an unknown status, a description over 1024 characters, or no such package.
        """
        if approval_status not in APPROVAL_STATUSES:
            raise RegistryError(
                f"ModelApprovalStatus {approval_status!r}: expected one of {', '.join(APPROVAL_STATUSES)}"
            )
        if approval_description is not None and len(approval_description) > 1024:
            raise RegistryError(f"ApprovalDescription has {len(approval_description)} characters; at most 1024")
        description = self.describe_model_package(name)
        with self._locked(description["ModelPackageGroupName"]) as folder:
            description.update(ModelApprovalStatus=approval_status, LastModifiedTime=time.time())
            if approval_description is not None:
                description["ApprovalDescription"] = approval_description
            atomic_write_json(folder / f"{description['ModelPackageVersion']}.json", description)
        return description

    def model_data(self, description: dict) -> tuple[Path, str]:
        """``(local path of the first container's model.tar.gz, its registered SHA-256)``.

        Raises:
            RegistryError: the archive is gone or its SHA-256 differs from the one registered.
        """
        url = description["InferenceSpecification"]["Containers"][0]["ModelDataUrl"]
        path = self.store.path(url)
        expected = (description.get("ModelDataSha256") or {}).get(url)
        if not path.is_file():
            raise RegistryError(f"{url}: the registered model archive is missing from the store ({path})")
        if expected and sha256_of(path) != expected:
            raise RegistryError(
                f"{url}: SHA-256 differs from the one registered for {description['ModelPackageArn']}"
            )
        return path, expected or sha256_of(path)


def resolve_model_package(store_root: str | Path, spec: str = "latest", group: str | None = None) -> dict[str, Any]:
    """Find a registered model for serving: ``spec`` is ``latest`` (newest Approved), an ARN or ``<group>/<version>``.

    Returns ``{"description": DescribeModelPackage, "model_path": Path of model.tar.gz, "sha256": hex}``; the
    archive's SHA-256 is checked against the registry.

    Raises:
        RegistryError: nothing matches, or the archive was changed after registration.
    """
    registry = ModelRegistry(store_root)
    description = registry.latest(group) if spec == "latest" else registry.describe_model_package(spec)
    path, digest = registry.model_data(description)
    return {"description": description, "model_path": path, "sha256": digest}
