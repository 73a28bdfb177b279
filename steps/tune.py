"""``tune``: TuningStep, a HyperparameterTuner over the ``train.py`` estimator.

Objective ``validation:accuracy`` (Maximize), parsed from train.py's metric line by ``imgclf.metrics``'
MetricDefinitions. Ranges from ``tuning.ranges`` (lr log-scaled continuous, batch-size categorical, epochs
integer, momentum, weight-decay); strategy Bayesian by default; early stopping ``Auto``. The job limits are
static (``tuning.max_jobs``, ``tuning.max_parallel_jobs``): SageMaker takes no pipeline parameters there.
Tuning jobs run on one ``TrainingInstanceType`` instance each, without checkpoints (trials run in parallel).

Hyperband allocates epochs itself, so the tuning job says how many: ``StrategyConfig.HyperbandStrategyConfig``
gets MinResource/MaxResource from the ``epochs`` range (or 1 and a fixed ``training.hyperparameters.epochs``).
SageMaker infers MaxResource only from a *static* ``epochs`` hyperparameter and rejects the job when it cannot
(HyperbandStrategyConfig.MaxResource, SageMaker API reference), which a tuned ``epochs`` never is.
"""

from __future__ import annotations

from typing import NamedTuple

from sagemaker.tuner import (
    CategoricalParameter,
    ContinuousParameter,
    HyperbandStrategyConfig,
    HyperparameterTuner,
    IntegerParameter,
    StrategyConfig,
)
from sagemaker.workflow.steps import ProcessingStep, TuningStep

from imgclf.metrics import METRIC_DEFINITIONS, OBJECTIVE_METRIC, OBJECTIVE_TYPE
from pipeline.config import CategoricalRange, Config, ContinuousRange, IntegerRange
from steps.context import StepContext, channels, make_estimator

STEP_NAME = "tune"


class HyperbandResources(NamedTuple):
    """HyperbandStrategyConfig's MinResource and MaxResource, in epochs."""

    min_resource: int
    max_resource: int


class DeterministicTuningStep(TuningStep):
    """TuningStep without the timestamped ``sagemaker_job_name`` static hyperparameter.

    SDK 2.257.7's TrainingStep drops that hyperparameter from its request, its TuningStep does not: the tuner's
    ``fit`` sets it to ``<base name>-<timestamp>``, which would make every build's definition differ and defeat
    step caching. SageMaker names each tuning job's training jobs itself, so the value is not needed.
    """

    @property
    def arguments(self):
        request = super().arguments
        for definition in [request.get("TrainingJobDefinition"), *request.get("TrainingJobDefinitions", [])]:
            if definition:
                definition.get("StaticHyperParameters", {}).pop("sagemaker_job_name", None)
        return request


def parameter_range(spec: ContinuousRange | IntegerRange | CategoricalRange):
    """The SDK's range object for one ``tuning.ranges`` entry."""
    if isinstance(spec, ContinuousRange):
        return ContinuousParameter(spec.min, spec.max, scaling_type=spec.scaling)
    if isinstance(spec, IntegerRange):
        return IntegerParameter(spec.min, spec.max, scaling_type=spec.scaling)
    return CategoricalParameter([str(value) for value in spec.values])


def hyperband_resources(config: Config) -> HyperbandResources | None:
    """MinResource and MaxResource in epochs for Hyperband: the ``epochs`` range's bounds (integer range, or the
    smallest and largest categorical value), or ``(1, epochs)`` for a fixed ``training.hyperparameters.epochs``.
    None when ``epochs`` is neither tuned nor fixed, or not a whole number (``pipeline check`` reports both)."""
    spec = config.tuning.ranges.get("epochs")
    try:
        if isinstance(spec, IntegerRange):
            return HyperbandResources(spec.min, spec.max)
        if isinstance(spec, CategoricalRange):
            values = [int(str(value)) for value in spec.values]
            return HyperbandResources(min(values), max(values))
        if spec is None and "epochs" in config.training.hyperparameters:
            return HyperbandResources(1, int(str(config.training.hyperparameters["epochs"])))
    except ValueError:
        return None
    return None


def build(ctx: StepContext, split: ProcessingStep) -> TuningStep:
    """Return the ``tune`` step over the split step's ``train`` and ``validation`` outputs."""
    tuning = ctx.config.tuning
    # Trials save no tensors: the debug step judges only the final training job, and the smdebug hook costs
    # about a third of each step's time on small models.
    estimator = make_estimator(ctx, STEP_NAME, instance_count=1, checkpoints=False, distributed=False,
                               extra_hyperparameters={"debugger": "false"})
    strategy_config = None
    resources = hyperband_resources(ctx.config) if tuning.strategy == "Hyperband" else None
    if resources:
        strategy_config = StrategyConfig(
            HyperbandStrategyConfig(min_resource=resources.min_resource, max_resource=resources.max_resource)
        )
    tuner = HyperparameterTuner(
        estimator=estimator,
        objective_metric_name=OBJECTIVE_METRIC,
        objective_type=OBJECTIVE_TYPE,
        hyperparameter_ranges={key: parameter_range(spec) for key, spec in sorted(tuning.ranges.items())},
        metric_definitions=list(METRIC_DEFINITIONS),
        strategy=tuning.strategy,
        strategy_config=strategy_config,
        max_jobs=tuning.max_jobs,
        max_parallel_jobs=tuning.max_parallel_jobs,
        # Hyperband does its own early stopping; SageMaker rejects TrainingJobEarlyStoppingType with it.
        early_stopping_type="Off" if tuning.strategy == "Hyperband" else tuning.early_stopping,
        base_tuning_job_name=ctx.job_name(STEP_NAME),
        tags=ctx.tags,
    )
    step_args = tuner.fit(inputs=channels(split, ctx.config.training.weights_uri))
    return DeterministicTuningStep(name=STEP_NAME, step_args=step_args, cache_config=ctx.cache)
