"""Facts about SageMaker instance types that the definition depends on: local (instance store) storage, the
processor the AWS containers are built for, and which types each job kind accepts.

One table, :data:`INSTANCE_STORE_FAMILIES`, says which instance families come with local NVMe storage. It matters
because SageMaker refuses a KMS key for volumes it does not provision:

- CreateTrainingJob ``ResourceConfig.VolumeKmsKeyId``, CreateHyperParameterTuningJob
  ``HyperParameterTuningResourceConfig.VolumeKmsKeyId`` and CreateProcessingJob
  ``ProcessingClusterConfig.VolumeKmsKeyId``: "Certain Nitro-based instances include local storage ... Local
  storage volumes are encrypted using a hardware module on the instance. You can't request a VolumeKmsKeyId when
  using an instance type with local storage." (SageMaker API reference, ResourceConfig / ProcessingClusterConfig;
  the same text is in botocore's sagemaker service model).
- CreateEndpointConfig ``KmsKeyId``: "If any of the models that you specify in the ProductionVariants parameter
  use nitro-based instances with local storage, do not specify a value for the KmsKeyId parameter. If you specify
  a value for KmsKeyId when using any nitro-based instances with local storage, the call to CreateEndpointConfig
  fails." (API reference, CreateEndpointConfig; botocore 1.44's model says instead that the key "does not encrypt
  instance local storage": either way it is useless there, so it is left out).

Which families have instance store: the EC2 naming convention marks them with ``d`` among the attributes after
the generation digit (``c5d``, ``m5d``, ``r6gd``, ``g4dn``, ``p3dn``, ``p4d``, ``p4de``; "d - Instance store
volumes", https://docs.aws.amazon.com/ec2/latest/instancetypes/instance-type-names.html); the accelerated families
below have NVMe instance store without the letter (EC2 instance type specifications, "Instance store" column of
https://docs.aws.amazon.com/ec2/latest/instancetypes/ac.html; SageMaker's ResourceConfig.VolumeSizeInGB names
ml.p4d, ml.g4dn and ml.g5 as "ML instance families with the NVMe-type instance storage").
"""

from __future__ import annotations

import re
from functools import cache

#: Families with NVMe instance store whose name carries no ``d`` attribute (EC2 accelerated computing specs).
INSTANCE_STORE_FAMILIES = frozenset({
    "dl1", "g5", "g6", "g6e", "p5", "p5e", "p5en", "p6-b200", "p6-b300", "p6e-gb200", "trn1", "trn1n", "trn2",
})  # fmt: skip
_FAMILY = re.compile(r"^ml\.(?P<family>(?P<series>[a-z]+)(?P<generation>\d+)(?P<attributes>[a-z]*)(?:-[a-z0-9]+)?)\.")

#: Job kinds and the botocore shape that enumerates the instance types each accepts (the API's own enums).
INSTANCE_TYPE_SHAPES = {
    "training": "TrainingInstanceType",
    "processing": "ProcessingInstanceType",
    "endpoint": "ProductionVariantInstanceType",
    "transform": "TransformInstanceType",
}


def family(instance_type: str) -> str | None:
    """``"ml.g4dn.xlarge"`` -> ``"g4dn"``, ``"ml.p6-b200.48xlarge"`` -> ``"p6-b200"``; None when not ``ml.<f>.<s>``."""
    match = _FAMILY.match(instance_type)
    return match.group("family") if match else None


def has_instance_store(instance_type: str) -> bool:
    """True when ``instance_type`` comes with local NVMe storage, so SageMaker takes no volume KMS key for it."""
    match = _FAMILY.match(instance_type)
    if not match:
        return False
    return match.group("family") in INSTANCE_STORE_FAMILIES or "d" in match.group("attributes")


def volume_kms_key(instance_type: str, key: str | None) -> str | None:
    """The volume KMS key to request for ``instance_type``: ``key``, or None where the type has instance store
    (its local disks are encrypted by the instance's hardware module; SageMaker refuses a key there)."""
    return None if key is None or has_instance_store(instance_type) else key


def is_gpu(instance_type: str) -> bool:
    """True for NVIDIA GPU instance types: the SDK's own rule for picking the ``gpu`` image (families starting with
    ``g`` or ``p``; ``sagemaker.image_uris._processor``)."""
    name = family(instance_type)
    return bool(name) and name[0] in ("g", "p")


@cache
def valid_instance_types(kind: str) -> frozenset[str]:
    """The instance types SageMaker's API accepts for ``kind`` (a key of :data:`INSTANCE_TYPE_SHAPES`), read from
    botocore's sagemaker service model (the enum of the request field)."""
    import botocore.session

    model = botocore.session.get_session().get_service_model("sagemaker")
    return frozenset(model.shape_for(INSTANCE_TYPE_SHAPES[kind]).enum)
