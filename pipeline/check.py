"""``python -m pipeline check``: the config and the built definition against AWS's documented constraints.

Runs offline, before any AWS call (``upsert`` runs it first and stops on a finding). Each finding is one line,
``<where>: <problem>. Fix: <fix> [<rule>]``, and each rule below names its source. Two kinds of rules:

- **Request shapes** (:func:`request_shape_findings`): every job request in the definition (processing, training,
  tuning, model package, model) is walked against its input shape in botocore's sagemaker service model, the
  machine-readable form of the SageMaker API reference: unknown and missing required members, enums, length and
  value bounds, list sizes and name patterns. That covers job-name lengths (a tuning job name has at most 32
  characters), hyperparameter counts and value lengths, tags, processing run times (at most 9 days), parameter-range
  counts, the registry's instance types, and whatever else the API states. Pipeline expressions (``{"Get": ...}``)
  are values known only at run time and are skipped.
- **Rules the shapes cannot express** (:func:`config_findings`): instance types per job kind (the pipeline
  parameters' defaults are not in the job requests), Hyperband's resources and early stopping, range scaling,
  spot waiting time, the deploy Lambda's name, the definition's size, the endpoint's instance type in the registry.

:func:`parameter_findings` checks ``start --param`` overrides of instance types against the same sources plus the
volume-KMS rule of :mod:`pipeline.instances`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache

from pipeline.config import CategoricalRange, Config, IntegerRange
from pipeline.instances import has_instance_store, valid_instance_types

#: Step type of the definition -> the SageMaker API operation its ``Arguments`` are the request of.
STEP_OPERATIONS = {
    "Processing": "CreateProcessingJob",
    "Training": "CreateTrainingJob",
    "Tuning": "CreateHyperParameterTuningJob",
    "RegisterModel": "CreateModelPackage",
    "Model": "CreateModel",
}
#: CreatePipeline ``PipelineDefinition``: at most 1,048,576 characters (SageMaker API reference, CreatePipeline).
MAX_DEFINITION_CHARS = 1_048_576
#: HyperbandStrategyConfig.MaxResource: "The maximum value is 20,000 epochs" (SageMaker API reference).
HYPERBAND_MAX_RESOURCE = 20_000
#: Lambda CreateFunction FunctionName: "If you specify only the function name, it is limited to 64 characters".
LAMBDA_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
#: Model package versions the deploy names leave room for (up to 9999 registrations in the group).
DEPLOY_VERSION_DIGITS = 4
#: Pipeline parameters holding an instance type, and the job kind each is used for.
INSTANCE_PARAMETERS = {"TrainingInstanceType": "training", "ProcessingInstanceType": "processing"}


@dataclass(frozen=True)
class Finding:
    """One broken constraint: where (a config key or a definition path), what, the fix, and the rule's name."""

    where: str
    problem: str
    fix: str
    rule: str

    def __str__(self) -> str:
        return f"{self.where}: {self.problem}. Fix: {self.fix} [{self.rule}]"


# ------------------------------------------------------------------------------------------- request shapes


@cache
def _service_model():
    import botocore.session

    return botocore.session.get_session().get_service_model("sagemaker")


def _is_expression(value) -> bool:
    """A pipeline expression (``Get``, ``Std:Join``, ``Std:JsonGet``...): resolved at run time, not checkable here."""
    return isinstance(value, dict) and len(value) == 1 and (next(iter(value)) == "Get" or ":" in next(iter(value)))


def _pattern_ok(pattern: str, text: str) -> bool:
    try:
        return re.fullmatch(pattern, text) is not None
    except re.error:  # \p{L} and friends: Python's re has no Unicode classes; nothing to check against
        return True


def _walk(shape, value, path: str, found: list[str]) -> None:
    if value is None or _is_expression(value):
        return
    meta = shape.metadata
    kind = shape.type_name
    if kind == "structure":
        if not isinstance(value, dict):
            found.append(f"{path}: expected an object")
            return
        for name in meta.get("required", []):
            if name not in value:
                found.append(f"{path}.{name}: required member is missing")
        for name, item in value.items():
            if name not in shape.members:
                found.append(f"{path}.{name}: not a member of {shape.name}")
            else:
                _walk(shape.members[name], item, f"{path}.{name}", found)
    elif kind == "list":
        if isinstance(value, list):
            _bounds(meta, len(value), path, found, "items")
            for index, item in enumerate(value):
                _walk(shape.member, item, f"{path}[{index}]", found)
    elif kind == "map":
        if isinstance(value, dict):
            _bounds(meta, len(value), path, found, "entries")
            for key, item in value.items():
                _walk(shape.key, key, f"{path} key {key!r}", found)
                _walk(shape.value, item, f"{path}[{key!r}]", found)
    elif kind == "string" and isinstance(value, str):
        _bounds(meta, len(value), path, found, "characters")
        if shape.enum and value not in shape.enum:
            found.append(f"{path}: {value!r} is not one of the {len(shape.enum)} values {shape.name} accepts")
        elif "pattern" in meta and not _pattern_ok(meta["pattern"], value):
            found.append(f"{path}: {value!r} does not match {shape.name}'s pattern {meta['pattern']}")
    elif kind in ("integer", "long") and isinstance(value, int) and not isinstance(value, bool):
        _bounds(meta, value, path, found, "")


def _bounds(meta: dict, size: int, path: str, found: list[str], unit: str) -> None:
    what = f"{size} {unit}".strip()
    if "min" in meta and size < meta["min"]:
        found.append(f"{path}: {what}, below the minimum {meta['min']}")
    if "max" in meta and size > meta["max"]:
        found.append(f"{path}: {what}, above the maximum {meta['max']}")


def _steps(steps: list[dict]):
    for step in steps:
        yield step
        for branch in ("IfSteps", "ElseSteps"):
            yield from _steps(step.get("Arguments", {}).get(branch, []))


def request_shape_findings(definition: dict) -> list[Finding]:
    """Each job request of ``definition`` against its API input shape (botocore's sagemaker model)."""
    findings = []
    for step in _steps(definition.get("Steps", [])):
        operation = STEP_OPERATIONS.get(step.get("Type"))
        if not operation:
            continue
        shape = _service_model().operation_model(operation).input_shape
        problems: list[str] = []
        _walk(shape, step.get("Arguments", {}), f"step {step['Name']}", problems)
        findings += [
            Finding(problem.partition(": ")[0], f"{operation} would refuse it: {problem.partition(': ')[2]}",
                    _shape_fix(problem), "api-shape")
            for problem in problems
        ]  # fmt: skip
    return findings


def _shape_fix(problem: str) -> str:
    if "JobName" in problem:
        return "shorten base_job_prefix (the job name is <base_job_prefix>-<step>)"
    if "InstanceTypes" in problem:
        return "use instance types listed for that job kind in the SageMaker API reference"
    if "Tags" in problem:
        return "shorten or remove entries of tags (at most 50; keys 128 and values 256 characters)"
    if "MaxRuntimeInSeconds" in problem:
        return "lower instances.max_runtime_s (processing jobs run at most 777600 s)"
    return "change the config value behind this field to what the SageMaker API reference allows"


# ------------------------------------------------------------------------------------------- config rules


def _instance_type_findings(config: Config) -> list[Finding]:
    """Each configured instance type against the API's enum for its job kind (botocore's sagemaker model:
    TrainingInstanceType, ProcessingInstanceType, ProductionVariantInstanceType, TransformInstanceType)."""
    checks = [
        ("instances.training_type", config.instances.training_type, "training"),
        ("instances.processing_type", config.instances.processing_type, "processing"),
        *((f"deploy.stages.{name}.instance_type", stage.instance_type, "endpoint") for name, stage in _stages(config)),
        *(("registry.inference_instance_types", t, "endpoint") for t in config.registry.inference_instance_types),
        *(("registry.transform_instance_types", t, "transform") for t in config.registry.transform_instance_types),
    ]
    findings = []
    for where, instance_type, kind in checks:
        if instance_type not in valid_instance_types(kind):
            findings.append(Finding(where, f"{instance_type} is not a SageMaker {kind} instance type",
                                    f"pick one of {_close(instance_type, kind)}", "instance-type"))  # fmt: skip
    return findings


def _close(instance_type: str, kind: str) -> str:
    import difflib

    close = difflib.get_close_matches(instance_type, sorted(valid_instance_types(kind)), n=3, cutoff=0.6)
    return ", ".join(close) if close else f"the {kind} instance types of the SageMaker API reference"


def _tuning_findings(config: Config) -> list[Finding]:
    from steps.tune import hyperband_resources

    tuning, findings = config.tuning, []
    if tuning.strategy == "Hyperband":
        # HyperParameterTuningJobConfig.TrainingJobEarlyStoppingType: "TrainingJobEarlyStoppingType must be OFF to
        # use Hyperband" (SageMaker API reference); the build forces Off, the config should say what runs.
        if tuning.early_stopping != "Off":
            findings.append(Finding("tuning.early_stopping", "Hyperband stops jobs early itself and SageMaker takes "
                                    "no TrainingJobEarlyStoppingType with it", "set tuning.early_stopping: Off",
                                    "hyperband-early-stopping"))  # fmt: skip
        # HyperbandStrategyConfig.MaxResource: inferred only from a static epochs hyperparameter, else a
        # validation error; at most 20,000 (SageMaker API reference). steps/tune.py passes it from the config.
        resources = hyperband_resources(config)
        if resources is None:
            findings.append(Finding("tuning.strategy", "Hyperband needs the number of epochs as its resource, and "
                                    "epochs is neither a whole-number range nor fixed", "add an integer epochs range "
                                    "to tuning.ranges or set training.hyperparameters.epochs", "hyperband-resource"))
        elif resources.max_resource > HYPERBAND_MAX_RESOURCE:
            findings.append(Finding("tuning.ranges.epochs", f"Hyperband's MaxResource {resources.max_resource} exceeds "
                                    f"{HYPERBAND_MAX_RESOURCE}", f"keep epochs at most {HYPERBAND_MAX_RESOURCE}",
                                    "hyperband-resource"))  # fmt: skip
    for name, spec in sorted(tuning.ranges.items()):
        where = f"tuning.ranges.{name}"
        if isinstance(spec, CategoricalRange):
            continue
        # Integer/ContinuousParameterRange.ScalingType: "Logarithmic scaling works only for ranges that have only
        # values greater than 0"; "Reverse logarithmic scaling works only for ranges that are entirely within the
        # range 0<=x<1.0" (SageMaker API reference).
        if spec.scaling == "Logarithmic" and spec.min <= 0:
            findings.append(Finding(where, f"Logarithmic scaling needs min > 0, got {spec.min:g}",
                                    "raise min above 0 or use Linear scaling", "range-scaling"))
        if isinstance(spec, IntegerRange) and spec.scaling == "ReverseLogarithmic":
            findings.append(Finding(where, "ReverseLogarithmic scaling is for continuous ranges within [0, 1)",
                                    "use Linear or Logarithmic scaling", "range-scaling"))
        elif spec.scaling == "ReverseLogarithmic" and not (spec.min >= 0 and spec.max < 1):
            findings.append(Finding(where, f"ReverseLogarithmic scaling needs 0 <= values < 1, got "
                                    f"[{spec.min:g}, {spec.max:g}]", "use Linear or Logarithmic scaling",
                                    "range-scaling"))  # fmt: skip
    return findings


def _job_findings(config: Config) -> list[Finding]:
    findings = []
    training = config.training
    # StoppingCondition.MaxWaitTimeInSeconds: "It must be equal to or greater than MaxRuntimeInSeconds"
    if training.spot and training.max_wait_s < config.instances.max_runtime_s:
        findings.append(Finding("training.max_wait_s", f"{training.max_wait_s} s is shorter than "
                                f"instances.max_runtime_s ({config.instances.max_runtime_s} s)",
                                "make max_wait_s at least max_runtime_s", "spot-wait"))  # fmt: skip
    if config.deploy.enabled:
        if not LAMBDA_NAME.match(config.deploy.lambda_function_name):
            findings.append(Finding("deploy.lambda_function_name", f"{config.deploy.lambda_function_name!r} is not a "
                                    "Lambda function name (1-64 letters, digits, '-' or '_')",
                                    "rename the function", "lambda-name"))  # fmt: skip
        # The deploy Lambda names the endpoint's model "<endpoint>-v<version>" and its config
        # "<endpoint>-v<version>-<8 hex>" (entrypoints/deploy_endpoint.py); CreateModel ModelName and
        # CreateEndpointConfig EndpointConfigName take at most 63 characters (SageMaker API reference), and a name
        # cut to fit would be the same for every version, so the next deployment would reuse the old model.
        for name, stage in _stages(config):
            where = f"deploy.stages.{name}"
            longest = len(f"{stage.endpoint_name}-v{DEPLOY_VERSION_DIGITS * '9'}-{8 * 'f'}")
            if longest > 63:
                findings.append(Finding(f"{where}.endpoint_name", f"{stage.endpoint_name!r} leaves no room for the "
                                        f"version in its model and endpoint-config names ({longest} > 63 characters)",
                                        f"shorten it to at most {63 - longest + len(stage.endpoint_name)} "
                                        "characters", "deploy-names"))  # fmt: skip
            # The register step lists the production type's processor in the primary InferenceSpecification and
            # the other processor's in AdditionalInferenceSpecifications: each stage's type must be declared.
            if stage.instance_type not in config.registry.inference_instance_types:
                findings.append(Finding(f"{where}.instance_type", f"{stage.instance_type} is not among "
                                        "registry.inference_instance_types, so the model package does not declare it",
                                        "add it to registry.inference_instance_types", "deploy-type-registered"))
    return findings


def _stages(config: Config) -> list[tuple[str, object]]:
    """``[("staging", stage), ("production", stage)]``: the endpoints the deploy Lambda creates."""
    return [(name, getattr(config.deploy.stages, name)) for name in ("staging", "production")]


def config_findings(config: Config, definition: str | None = None) -> list[Finding]:
    """The rules that are not request shapes (module docstring); ``definition`` is the built JSON text."""
    findings = _instance_type_findings(config) + _tuning_findings(config) + _job_findings(config)
    if definition is not None and len(definition) > MAX_DEFINITION_CHARS:
        findings.append(Finding("definition", f"{len(definition)} characters; CreatePipeline takes at most "
                                f"{MAX_DEFINITION_CHARS}", "drop rules or ranges to shrink it", "definition-size"))
    return findings


def check(config: Config, definition: str | None = None) -> list[Finding]:
    """Every finding for ``config``: build the definition offline, then all rules. Empty when AWS would accept it.

    ``definition``: the definition JSON already built for ``config`` (:func:`pipeline.build.build`), so that a
    caller that also needs the build does it once; built here when None.
    Raises what the build raises (ConfigError, ValueError from the SDK) before any rule runs.
    """
    from pipeline.build import definition_json

    text = definition if definition is not None else definition_json(config)
    definition = json.loads(text)
    return config_findings(config, text) + volume_key_findings(definition) + request_shape_findings(definition)


def parameter_findings(config: Config, params: dict[str, str]) -> list[Finding]:
    """``start --param`` overrides of instance-type and count parameters against the same sources.

    An override that moves between instance types with and without instance store, while ``security.kms_key_id``
    is set, would run a definition built for the other kind: with a volume key SageMaker refuses instance-store
    types, without one an EBS volume goes unencrypted by the key (:mod:`pipeline.instances`).
    """
    findings = []
    defaults = {"TrainingInstanceType": config.instances.training_type,
                "ProcessingInstanceType": config.instances.processing_type}  # fmt: skip
    for name, kind in INSTANCE_PARAMETERS.items():
        if name not in params:
            continue
        value = params[name]
        if value not in valid_instance_types(kind):
            findings.append(Finding(f"--param {name}", f"{value} is not a SageMaker {kind} instance type",
                                    f"pick one of {_close(value, kind)}", "instance-type"))
        elif config.security.kms_key_id and has_instance_store(value) != has_instance_store(defaults[name]):
            store = "has" if has_instance_store(value) else "has no"
            findings.append(Finding(f"--param {name}", f"{value} {store} instance store, unlike the default "
                                    f"{defaults[name]}, and the definition's volume KMS key follows the default",
                                    f"set it as the default (instances.{kind}_type) and run upsert, then start",
                                    "kms-instance-store"))  # fmt: skip
    if "TrainingInstanceCount" in params:
        value = params["TrainingInstanceCount"]
        if not value.isdigit() or int(value) < 1:
            findings.append(Finding("--param TrainingInstanceCount", f"{value!r} is not a whole number >= 1",
                                    "give the number of training instances, e.g. 2", "instance-count"))
    return findings


def volume_key_findings(definition: dict) -> list[Finding]:
    """No volume KMS key beside an instance type with instance store (:mod:`pipeline.instances`; ResourceConfig,
    HyperParameterTuningResourceConfig and ProcessingClusterConfig ``VolumeKmsKeyId``). A parameter's instance
    type is judged by its default, the value a schedule or a plain ``start`` runs."""
    defaults = {p["Name"]: p.get("DefaultValue") for p in definition.get("Parameters", [])}
    findings = []
    for step in _steps(definition.get("Steps", [])):
        arguments = step.get("Arguments", {})
        job = arguments.get("TrainingJobDefinition", arguments)
        resources = (job.get("ResourceConfig") or job.get("HyperParameterTuningResourceConfig")
                     or job.get("ProcessingResources", {}).get("ClusterConfig") or {})  # fmt: skip
        instance_type = resources.get("InstanceType")
        if isinstance(instance_type, dict) and str(instance_type.get("Get", "")).startswith("Parameters."):
            instance_type = defaults.get(instance_type["Get"].removeprefix("Parameters."))
        if resources.get("VolumeKmsKeyId") and isinstance(instance_type, str) and has_instance_store(instance_type):
            findings.append(Finding(f"step {step['Name']}", f"a VolumeKmsKeyId on {instance_type}, which has instance "
                                    "store: SageMaker refuses it", "build the definition with this code (it leaves "
                                    "the key out) or pick an instance type without instance store",
                                    "kms-instance-store"))  # fmt: skip
    return findings
