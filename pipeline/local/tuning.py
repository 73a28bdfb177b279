"""A hyperparameter tuning job (``CreateHyperParameterTuningJob`` arguments) run locally with optuna.

Mapping of SageMaker's ``HyperParameterTuningJobConfig`` (API reference: HyperParameterTuningJobConfig,
ParameterRanges, TuningJobCompletionCriteria):

- ``Strategy``: ``Bayesian`` -> ``TPESampler(seed, constant_liar=True)`` (constant liar because trials run in
  parallel, as SageMaker's do); ``Random`` -> ``RandomSampler(seed)``; ``Grid`` -> every combination of the
  categorical and integer values, enqueued in order (SageMaker's Grid takes categorical ranges only; continuous
  ranges are refused; optuna's GridSampler is not used because it stops the study from inside ``tell``);
  ``Hyperband`` -> ``RandomSampler`` + ``HyperbandPruner`` (Hyperband is an early-stopping scheme over random
  configurations). ``RandomSeed`` seeds the sampler (0 when the definition has none, so runs repeat).
- ``TrainingJobEarlyStoppingType: Auto`` -> :class:`MedianStoppingPruner`, SageMaker's documented rule ("Stop
  Training Jobs Early", SageMaker developer guide): after each epoch, a job whose objective is worse than the median
  of the running averages (mean over epochs 1..n) of the earlier jobs' objective up to the same epoch is stopped.
  The pruner is fed the objective metric line by line from the trial's log and the trial's process is stopped
  (status ``Stopped``).
- ``ParameterRanges``: continuous -> ``FloatDistribution`` (``ScalingType: Logarithmic`` -> ``log=True``;
  ``ReverseLogarithmic`` is sampled linearly), integer -> ``IntDistribution``, categorical -> the ``Values``
  strings as given (JSON-encoded by the SDK, e.g. ``"\\"64\\""``), so tuned values reach ``train.py`` as on AWS.
- ``ResourceLimits``: ``MaxNumberOfTrainingJobs`` trials; ``MaxParallelTrainingJobs`` at once, bounded by the
  local CPU budget; each trial gets ``cpus // parallel`` threads.

Trials are recorded in an optuna journal file (``<state_dir>/optuna.journal``), so a tuning job interrupted by a
kill continues on ``--resume``: finished trials are kept and the trials that were running are run again.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from pipeline.local.jobs import JobContext, JobError, JobResult, job_arn, run_training_job
from pipeline.local.status import JobStatus

#: Finished earlier jobs needed before the median stopping rule stops anything (SageMaker documents none; a median
#: of one job would stop every job worse than the first).
MEDIAN_STARTUP_TRIALS = 2
#: The study's user attribute listing the numbers of the trials a killed run left running (not counted).
INTERRUPTED = "interrupted_trials"
optuna.logging.set_verbosity(optuna.logging.WARNING)


class MedianStoppingPruner(optuna.pruners.BasePruner):
    """SageMaker's early stopping for tuning jobs (``TrainingJobEarlyStoppingType: Auto``) as an optuna pruner.

    After epoch ``n`` of a trial (its reported step), the trial is pruned when its objective is worse (lower when
    maximizing) than the median, over the earlier finished trials that reached epoch ``n``, of each one's running
    average of the objective over its epochs ``1..n``. Nothing is pruned until ``min_earlier_trials`` such trials
    exist. A NaN objective is pruned. Source: SageMaker developer guide, "Stop Training Jobs Early".

    Unlike optuna's MedianPruner (the median of values at epoch ``n``), running averages include the slow first
    epochs of earlier jobs, so the rule is lenient with a job still climbing.
    """

    def __init__(self, min_earlier_trials: int = MEDIAN_STARTUP_TRIALS):
        self.min_earlier_trials = min_earlier_trials

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        step = trial.last_step
        if step is None:
            return False
        value = trial.intermediate_values[step]
        if math.isnan(value):
            return True
        averages = []
        for earlier in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
            upto = [v for s, v in earlier.intermediate_values.items() if s <= step and not math.isnan(v)]
            if upto and earlier.last_step is not None and earlier.last_step >= step:  # it reached epoch n
                averages.append(sum(upto) / len(upto))
        if len(averages) < self.min_earlier_trials:
            return False
        median = statistics.median(averages)
        return value < median if study.direction == optuna.study.StudyDirection.MAXIMIZE else value > median


TrialCallback = Callable[[str, str, dict], None]


def distributions(parameter_ranges: dict) -> dict[str, Any]:
    """optuna distributions for a definition's ``ParameterRanges`` (see the module docstring).

    Raises:
        JobError: a range with min > max or no values, or a name defined twice.
    """
    found: dict[str, Any] = {}

    def add(name: str, distribution: Any) -> None:
        if name in found:
            raise JobError(f"ParameterRanges: {name!r} is defined twice")
        found[name] = distribution

    for item in parameter_ranges.get("ContinuousParameterRanges", []):
        low, high = float(item["MinValue"]), float(item["MaxValue"])
        if low > high:
            raise JobError(f"ParameterRanges: {item['Name']}: MinValue {low} > MaxValue {high}")
        log = item.get("ScalingType") == "Logarithmic"
        if log and low <= 0:
            raise JobError(f"ParameterRanges: {item['Name']}: Logarithmic scaling needs MinValue > 0 (got {low})")
        add(item["Name"], FloatDistribution(low, high, log=log))
    for item in parameter_ranges.get("IntegerParameterRanges", []):
        low, high = int(item["MinValue"]), int(item["MaxValue"])
        if low > high:
            raise JobError(f"ParameterRanges: {item['Name']}: MinValue {low} > MaxValue {high}")
        add(item["Name"], IntDistribution(low, high, log=item.get("ScalingType") == "Logarithmic" and low > 0))
    for item in parameter_ranges.get("CategoricalParameterRanges", []):
        values = [str(v) for v in item.get("Values", [])]
        if not values:
            raise JobError(f"ParameterRanges: {item['Name']}: no Values")
        add(item["Name"], CategoricalDistribution(values))
    if not found:
        raise JobError("ParameterRanges: nothing to tune (no continuous, integer or categorical range)")
    return found


def _grid(space: dict[str, Any]) -> dict[str, list]:
    grid = {}
    for name, distribution in space.items():
        if isinstance(distribution, CategoricalDistribution):
            grid[name] = list(distribution.choices)
        elif isinstance(distribution, IntDistribution):
            grid[name] = list(range(distribution.low, distribution.high + 1))
        else:
            raise JobError(
                f"Strategy Grid: {name!r} is a continuous range; Grid takes categorical (or integer) ranges"
            )
    return grid


def sampler_and_pruner(
    config: dict, space: dict[str, Any]
) -> tuple[optuna.samplers.BaseSampler, optuna.pruners.BasePruner]:
    """The optuna sampler and pruner for a ``HyperParameterTuningJobConfig`` (see the module docstring).

    Raises:
        JobError: an unknown strategy.
    """
    strategy = config.get("Strategy", "Bayesian")
    seed = int(config.get("RandomSeed", 0))
    early_stopping = config.get("TrainingJobEarlyStoppingType", "Off") == "Auto"
    pruner: optuna.pruners.BasePruner = (
        MedianStoppingPruner()
        if early_stopping
        else optuna.pruners.NopPruner()
    )
    if strategy == "Bayesian":
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True), pruner
    if strategy == "Random":
        return optuna.samplers.RandomSampler(seed=seed), pruner
    if strategy == "Grid":
        _grid(space)  # refuses continuous ranges; the combinations are enqueued by _open_study
        return optuna.samplers.RandomSampler(seed=seed), pruner
    if strategy == "Hyperband":
        return optuna.samplers.RandomSampler(seed=seed), optuna.pruners.HyperbandPruner(min_resource=1)
    raise JobError(
        f"HyperParameterTuningJobConfig.Strategy {strategy!r}: expected Bayesian, Random, Grid or Hyperband"
    )


def _as_hyperparameter(value: Any) -> str:
    """A tuned value as a hyperparameter string (categoricals keep their JSON-encoded form)."""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def trial_job_name(tuning_job_name: str, number: int) -> str:
    """SageMaker's tuning trial name: ``<tuning job>-<3-digit index>-<8 hex>`` (deterministic here)."""
    digest = hashlib.sha256(f"{tuning_job_name}/{number}".encode()).hexdigest()[:8]
    return f"{tuning_job_name}-{number + 1:03d}-{digest}"


def _training_arguments(definition: dict, hyperparameters: dict[str, str]) -> dict:
    """CreateTrainingJob arguments of one trial from the tuning job's TrainingJobDefinition."""
    arguments = {
        key: value
        for key, value in definition.items()
        if key
        not in (
            "StaticHyperParameters",
            "HyperParameterTuningResourceConfig",
            "DefinitionName",
            "TuningObjective",
            "HyperParameterRanges",
        )
    }
    arguments["ResourceConfig"] = definition.get("ResourceConfig") or definition.get(
        "HyperParameterTuningResourceConfig", {}
    )
    arguments["HyperParameters"] = hyperparameters
    return arguments


def _objective(value: float | None, maximize: bool) -> float:
    if value is None or math.isnan(value):
        return -math.inf if maximize else math.inf
    return value


def run_tuning_job(
    arguments: dict,
    tuning_job_name: str,
    context: JobContext,
    *,
    state_dir: Path,
    cpus: int,
    on_trial: TrialCallback | None = None,
    stop_event: threading.Event | None = None,
) -> JobResult:
    """Run the tuning job ``tuning_job_name`` (resolved ``CreateHyperParameterTuningJob`` arguments).

    ``cpus`` bounds the trials run at once (with MaxParallelTrainingJobs). ``on_trial(job name, event, data)`` is
    told ``"started"`` (data: tuned hyperparameters), ``"metrics"`` (data: metric values of one log line) and
    ``"finished"`` (data: the trial's summary).

    Returns a JobResult whose ``properties`` follow DescribeHyperParameterTuningJob plus ``TrainingJobSummaries``
    (ListTrainingJobsForHyperParameterTuningJob, best first): ``BestTrainingJob.TunedHyperParameters``,
    ``BestTrainingJob.TrainingJobName``, ``TrainingJobSummaries[k].TrainingJobName`` (the top-k models)...

    Raises:
        JobError: unsupported configuration (several training job definitions, bad ranges, unknown strategy).
    """
    plan = _TuningPlan.of(arguments, cpus)
    study = _open_study(tuning_job_name, plan, state_dir)
    start = time.time()
    trials = _Trials(study, plan, tuning_job_name, replace(context, threads=max(1, cpus // plan.parallel)), on_trial)
    trials.run_all(stop_event)
    return _tuning_result(arguments, tuning_job_name, study, plan.maximize, start, stop_event)


@dataclass(frozen=True)
class _TuningPlan:
    """What a ``CreateHyperParameterTuningJob`` request asks for, checked: the trials' ``definition``, the
    objective, the search ``space`` with its sampler and pruner, ``max_jobs`` trials ``parallel`` at a time."""

    definition: dict
    metric_name: str
    maximize: bool
    space: dict[str, Any]
    sampler: optuna.samplers.BaseSampler
    pruner: optuna.pruners.BasePruner
    grid: dict[str, list] | None
    max_jobs: int
    parallel: int

    @classmethod
    def of(cls, arguments: dict, cpus: int) -> _TuningPlan:
        """Raises JobError for what local mode does not run (see :func:`run_tuning_job`)."""
        config = arguments.get("HyperParameterTuningJobConfig") or {}
        definition = arguments.get("TrainingJobDefinition")
        if definition is None:
            raise JobError(
                "tuning job: only a single TrainingJobDefinition is supported locally (not TrainingJobDefinitions)"
            )
        objective = config.get("HyperParameterTuningJobObjective") or definition.get("TuningObjective") or {}
        metric_name = objective.get("MetricName")
        definitions = definition.get("AlgorithmSpecification", {}).get("MetricDefinitions", [])
        metric_names = {d.get("Name") for d in definitions}
        if metric_name not in metric_names:
            raise JobError(
                f"tuning objective {metric_name!r} has no MetricDefinition (defined: {sorted(metric_names)})"
            )
        space = distributions(config.get("ParameterRanges") or definition.get("HyperParameterRanges") or {})
        sampler, pruner = sampler_and_pruner(config, space)
        grid = _grid(space) if config.get("Strategy") == "Grid" else None
        limits = config.get("ResourceLimits") or {}
        max_jobs = int(limits.get("MaxNumberOfTrainingJobs") or 0)
        if grid is not None:
            combinations = math.prod(len(values) for values in grid.values())
            max_jobs = min(max_jobs, combinations) if max_jobs else combinations
        elif not max_jobs:
            raise JobError("ResourceLimits.MaxNumberOfTrainingJobs is required unless the strategy is Grid")
        parallel = max(1, min(int(limits.get("MaxParallelTrainingJobs") or 1), cpus, max_jobs))
        maximize = objective.get("Type", "Maximize") == "Maximize"
        return cls(definition, metric_name, maximize, space, sampler, pruner, grid, max_jobs, parallel)

    @property
    def static_hyperparameters(self) -> dict[str, str]:
        return {key: str(value) for key, value in (self.definition.get("StaticHyperParameters") or {}).items()}


def _open_study(tuning_job_name: str, plan: _TuningPlan, state_dir: Path) -> optuna.Study:
    """The tuning job's study in ``<state_dir>/optuna.journal``, created or resumed.

    A new Grid study gets every combination enqueued. Trials a killed run left running are told FAIL and their
    numbers added to the study's :data:`INTERRUPTED` user attribute, so they are not counted and run again.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(
        study_name=tuning_job_name,
        storage=JournalStorage(JournalFileBackend(str(state_dir / "optuna.journal"))),
        sampler=plan.sampler,
        pruner=plan.pruner,
        direction="maximize" if plan.maximize else "minimize",
        load_if_exists=True,
    )
    if plan.grid is not None and not study.get_trials(deepcopy=False):
        for values in itertools.product(*plan.grid.values()):
            study.enqueue_trial(dict(zip(plan.grid, values, strict=True)))
    left_running = [trial.number for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
    if left_running:
        study.set_user_attr(INTERRUPTED, sorted(_interrupted(study) | set(left_running)))
        for number in left_running:
            study.tell(number, state=TrialState.FAIL)
    return study


def _interrupted(study: optuna.Study) -> set[int]:
    """Numbers of the trials that a killed run left running (see :func:`_open_study`)."""
    return set(study.user_attrs.get(INTERRUPTED, []))


class _Trials:
    """The trials of one tuning job: each a training job, run ``plan.parallel`` at a time until ``plan.max_jobs``
    have finished. ``lock`` guards the study (``ask``, ``report``, ``tell``) across the trial threads."""

    def __init__(
        self,
        study: optuna.Study,
        plan: _TuningPlan,
        tuning_job_name: str,
        context: JobContext,
        on_trial: TrialCallback | None,
    ):
        self.study, self.plan, self.tuning_job_name, self.context = study, plan, tuning_job_name, context
        self.on_trial = on_trial or (lambda name, event, data: None)
        self.interrupted = _interrupted(study)
        self.lock = threading.Lock()

    def run_all(self, stop_event: threading.Event | None) -> None:
        """Start trials while fewer than ``max_jobs`` are finished or running (none once ``stop_event`` is set);
        wait for the first to finish; repeat until none runs."""
        running: set[Future] = set()
        with ThreadPoolExecutor(max_workers=self.plan.parallel, thread_name_prefix="trial") as pool:
            while True:
                while len(running) < self.plan.parallel and self.counted() + len(running) < self.plan.max_jobs:
                    if stop_event is not None and stop_event.is_set():
                        break
                    with self.lock:
                        trial = self.study.ask(self.plan.space)
                    running.add(pool.submit(self.run, trial, stop_event))
                if not running:
                    break
                done, running = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    future.result()  # re-raise bugs in the loop itself
                running = set(running)

    def counted(self) -> int:
        """Trials finished (completed, stopped early or failed), those a killed run left not counted."""
        finished = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
        trials = self.study.get_trials(deepcopy=False, states=finished)
        return sum(1 for trial in trials if trial.number not in self.interrupted)

    def run(self, trial: optuna.Trial, stop_event: threading.Event | None) -> None:
        """Run one trial's training job, then record its summary and result in the study."""
        name = trial_job_name(self.tuning_job_name, trial.number)
        tuned = {key: _as_hyperparameter(value) for key, value in trial.params.items()}
        self.on_trial(name, "started", tuned)
        result = self._train(trial, name, tuned, stop_event)
        final_metrics = result.properties.get("FinalMetricDataList", [])
        final = next((m["Value"] for m in final_metrics if m["MetricName"] == self.plan.metric_name), None)
        summary = self._summary(name, tuned, result, final)
        with self.lock:
            trial.set_user_attr("summary", summary)
            if result.status == JobStatus.COMPLETED and final is not None:
                self.study.tell(trial, _objective(final, self.plan.maximize))
            elif result.status == JobStatus.STOPPED:
                self.study.tell(trial, state=TrialState.PRUNED)
            else:
                self.study.tell(trial, state=TrialState.FAIL)
        self.on_trial(name, "finished", summary)

    def _train(self, trial: optuna.Trial, name: str, tuned: dict, stop_event: threading.Event | None) -> JobResult:
        """The trial's training job; its objective is reported to the pruner once per epoch (metric line)."""
        metric, epochs = self.plan.metric_name, 0

        def on_metrics(values: dict[str, float]) -> bool:
            nonlocal epochs
            self.on_trial(name, "metrics", values)
            if metric not in values:
                return False
            epochs += 1
            with self.lock:
                trial.report(values[metric], epochs)
                return trial.should_prune()

        arguments = _training_arguments(self.plan.definition, {**self.plan.static_hyperparameters, **tuned})
        try:
            return run_training_job(arguments, name, self.context, on_metrics=on_metrics, stop_event=stop_event)
        except Exception as error:  # a trial that cannot start fails alone, as on SageMaker
            return JobResult(JobStatus.FAILED, {"TrainingJobName": name}, f"{type(error).__name__}: {error}")

    def _summary(self, name: str, tuned: dict, result: JobResult, final: float | None) -> dict:
        """The trial's TrainingJobSummary (ListTrainingJobsForHyperParameterTuningJob), plus its ``Log``."""
        summary = {
            "TrainingJobName": name,
            "TrainingJobArn": job_arn("training-job", name),
            "TuningJobName": self.tuning_job_name,
            "TrainingJobStatus": result.status,
            "TunedHyperParameters": tuned,
            "TrainingStartTime": result.properties.get("TrainingStartTime"),
            "TrainingEndTime": result.properties.get("TrainingEndTime"),
            # ObjectiveStatus: Succeeded, Pending or Failed (its own vocabulary, not a job status)
            "ObjectiveStatus": "Succeeded" if result.status == JobStatus.COMPLETED and final is not None else "Failed",
            "Log": result.log_path,
        }
        if final is not None:
            summary["FinalHyperParameterTuningJobObjectiveMetric"] = {
                "Type": "Maximize" if self.plan.maximize else "Minimize",
                "MetricName": self.plan.metric_name,
                "Value": final,
            }
        if result.failure_reason:
            summary["FailureReason"] = result.failure_reason
        return summary


def _tuning_result(
    arguments: dict, name: str, study: optuna.Study, maximize: bool, start: float, stop_event: threading.Event | None
) -> JobResult:
    interrupted = _interrupted(study)
    summaries = [
        t.user_attrs["summary"]
        for t in study.get_trials(deepcopy=False)
        if "summary" in t.user_attrs and t.number not in interrupted
    ]
    sign = -1 if maximize else 1

    def rank(summary: dict) -> tuple:
        metric = summary.get("FinalHyperParameterTuningJobObjectiveMetric")
        ok = summary["TrainingJobStatus"] == JobStatus.COMPLETED and metric is not None
        return (0 if ok else 1, sign * metric["Value"] if ok else 0.0, summary["TrainingJobName"])

    summaries.sort(key=rank)
    counters = {
        status.value: sum(1 for s in summaries if s["TrainingJobStatus"] == status)
        for status in (JobStatus.COMPLETED, JobStatus.IN_PROGRESS, JobStatus.STOPPED)
    }
    counters["NonRetryableError"] = sum(1 for s in summaries if s["TrainingJobStatus"] == JobStatus.FAILED)
    counters["RetryableError"] = 0
    best = summaries[0] if summaries and rank(summaries[0])[0] == 0 else None
    properties = {
        **arguments,
        "HyperParameterTuningJobName": name,
        "HyperParameterTuningJobArn": job_arn("hyper-parameter-tuning-job", name),
        "CreationTime": start,
        "HyperParameterTuningEndTime": time.time(),
        "TrainingJobStatusCounters": counters,
        "ObjectiveStatusCounters": {
            "Succeeded": sum(1 for s in summaries if s["ObjectiveStatus"] == "Succeeded"),
            "Pending": 0,
            "Failed": sum(1 for s in summaries if s["ObjectiveStatus"] == "Failed"),
        },
        "TrainingJobSummaries": summaries,
    }
    if stop_event is not None and stop_event.is_set():
        status, reason = JobStatus.STOPPED, "the tuning job was stopped"
    elif best is None:
        status, reason = (
            JobStatus.FAILED,
            f"No training job succeeded ({len(summaries)} failed or were stopped); see their logs",
        )
    else:
        status, reason = JobStatus.COMPLETED, None
        properties["BestTrainingJob"] = best
    properties["HyperParameterTuningJobStatus"] = status
    if reason:
        properties["FailureReason"] = reason
    return JobResult(status, properties, reason)
