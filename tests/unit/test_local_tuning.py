"""Tuning jobs on optuna with a small real training script whose objective is known in closed form."""

from __future__ import annotations

import io
import math
import tarfile
import textwrap

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from pipeline.local.jobs import JobContext, JobError
from pipeline.local.store import Store
from pipeline.local.tuning import (
    MedianStoppingPruner,
    distributions,
    run_tuning_job,
    sampler_and_pruner,
    trial_job_name,
)

# Objective peaks at lr = 10**-1.5; batch-size 64 adds 0.05. With --slow, epochs take 0.2 s and a bad lr shows early.
OBJECTIVE = textwrap.dedent("""
    import argparse, math, time
    parser = argparse.ArgumentParser()
    parser.add_argument("--lr", type=float)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--slow", default="no")
    args = parser.parse_args()
    score = 0.9 - abs(math.log10(args.lr) + 1.5) / 4 + (0.05 if args.batch_size == 64 else 0.0)
    for epoch in range(1, args.epochs + 1):
        if args.slow == "yes":
            time.sleep(0.2)
        print(f"epoch={epoch} validation_accuracy={score * epoch / args.epochs:.6f}", flush=True)
    print("finished all epochs", flush=True)
""")


def _tarball(name: str, text: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo(name)
        info.size = len(text.encode())
        tar.addfile(info, io.BytesIO(text.encode()))
    return buffer.getvalue()


@pytest.fixture
def context(tmp_path) -> JobContext:
    store = Store(tmp_path / "store")
    store.put_bytes("s3://b/code/sourcedir.tar.gz", _tarball("objective.py", OBJECTIVE))
    store.put_bytes("s3://b/data/train/x.txt", b"x")
    return JobContext(store=store, jobs_dir=tmp_path / "jobs")


def _arguments(strategy="Bayesian", max_jobs=6, parallel=2, early_stopping="Off", static=None, ranges=None) -> dict:
    return {
        "HyperParameterTuningJobConfig": {
            "Strategy": strategy,
            "RandomSeed": 3,
            "TrainingJobEarlyStoppingType": early_stopping,
            "ResourceLimits": {"MaxNumberOfTrainingJobs": max_jobs, "MaxParallelTrainingJobs": parallel},
            "HyperParameterTuningJobObjective": {"Type": "Maximize", "MetricName": "validation:accuracy"},
            "ParameterRanges": ranges
            or {
                "ContinuousParameterRanges": [
                    {"Name": "lr", "MinValue": "0.001", "MaxValue": "1.0", "ScalingType": "Logarithmic"}
                ],
                "CategoricalParameterRanges": [{"Name": "batch-size", "Values": ['"32"', '"64"']}],
            },
        },
        "TrainingJobDefinition": {
            "StaticHyperParameters": {
                "sagemaker_program": '"objective.py"',
                "epochs": "2",
                "sagemaker_submit_directory": '"s3://b/code/sourcedir.tar.gz"',
                **(static or {}),
            },
            "AlgorithmSpecification": {
                "TrainingInputMode": "File",
                "MetricDefinitions": [{"Name": "validation:accuracy", "Regex": r"validation_accuracy=([0-9.]+)"}],
            },
            "InputDataConfig": [
                {
                    "ChannelName": "train",
                    "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://b/data/train"}},
                }
            ],
            "OutputDataConfig": {"S3OutputPath": "s3://b/models"},
            "HyperParameterTuningResourceConfig": {"InstanceCount": 1, "InstanceType": "ml.m5.large"},
        },
    }


def _expected(tuned: dict) -> float:
    return 0.9 - abs(math.log10(float(tuned["lr"])) + 1.5) / 4 + (0.05 if tuned["batch-size"] == '"64"' else 0.0)


def test_bayesian_tuning_finds_the_best_trial_and_ranks_summaries(context, tmp_path):
    result = run_tuning_job(_arguments(), "tune-a", context, state_dir=tmp_path / "state", cpus=2)
    assert result.status == "Completed", result.failure_reason
    summaries = result.properties["TrainingJobSummaries"]
    assert len(summaries) == 6
    values = [s["FinalHyperParameterTuningJobObjectiveMetric"]["Value"] for s in summaries]
    assert values == sorted(values, reverse=True)  # best first, so TrainingJobSummaries[k] is the top-k model
    best = result.properties["BestTrainingJob"]
    assert best["TrainingJobName"] == summaries[0]["TrainingJobName"]
    assert best["TunedHyperParameters"]["batch-size"] in ('"32"', '"64"')  # categorical values keep their JSON form
    # the objective was parsed from the trial's log with the definition's regex
    assert best["FinalHyperParameterTuningJobObjectiveMetric"]["Value"] == pytest.approx(
        _expected(best["TunedHyperParameters"]), abs=1e-5
    )
    assert {s["TrainingJobName"] for s in summaries} == {trial_job_name("tune-a", n) for n in range(6)}
    model = f"s3://b/models/{best['TrainingJobName']}/output/model.tar.gz"
    assert context.store.exists(model)
    assert result.properties["TrainingJobStatusCounters"]["Completed"] == 6


def test_early_stopping_stops_worse_trials(context, tmp_path):
    arguments = _arguments(
        strategy="Random", max_jobs=8, parallel=1, early_stopping="Auto", static={"slow": '"yes"', "epochs": "5"}
    )
    result = run_tuning_job(arguments, "tune-b", context, state_dir=tmp_path / "state", cpus=1)
    assert result.status == "Completed"
    stopped = [s for s in result.properties["TrainingJobSummaries"] if s["TrainingJobStatus"] == "Stopped"]
    assert stopped, "the median rule stopped no trial"
    for summary in stopped:
        log = (context.jobs_dir / f"{summary['TrainingJobName']}.log").read_text()
        assert "finished all epochs" not in log  # its process was really stopped mid-run
    assert result.properties["TrainingJobStatusCounters"]["Stopped"] == len(stopped)
    assert result.properties["BestTrainingJob"]["TrainingJobStatus"] == "Completed"


def test_grid_runs_every_combination(context, tmp_path):
    ranges = {
        "CategoricalParameterRanges": [
            {"Name": "lr", "Values": ["0.01", "0.1"]},
            {"Name": "batch-size", "Values": ['"32"', '"64"']},
        ]
    }
    arguments = _arguments(strategy="Grid", ranges=ranges)
    del arguments["HyperParameterTuningJobConfig"]["ResourceLimits"]["MaxNumberOfTrainingJobs"]
    result = run_tuning_job(arguments, "tune-c", context, state_dir=tmp_path / "state", cpus=2)
    combos = {
        (s["TunedHyperParameters"]["lr"], s["TunedHyperParameters"]["batch-size"])
        for s in result.properties["TrainingJobSummaries"]
    }
    assert combos == {("0.01", '"32"'), ("0.01", '"64"'), ("0.1", '"32"'), ("0.1", '"64"')}
    assert result.properties["BestTrainingJob"]["TunedHyperParameters"] == {"lr": "0.01", "batch-size": '"64"'}


def test_resume_keeps_finished_trials_and_reruns_interrupted_ones(context, tmp_path):
    state = tmp_path / "state"
    first = run_tuning_job(_arguments(max_jobs=2, parallel=1), "tune-d", context, state_dir=state, cpus=1)
    assert first.status == "Completed"
    storage = JournalStorage(JournalFileBackend(str(state / "optuna.journal")))
    study = optuna.load_study(study_name="tune-d", storage=storage)
    study.ask()  # a trial left RUNNING, as a killed run leaves it
    again = run_tuning_job(_arguments(max_jobs=3, parallel=1), "tune-d", context, state_dir=state, cpus=1)
    names = [s["TrainingJobName"] for s in again.properties["TrainingJobSummaries"]]
    assert len(names) == 3
    assert {s["TrainingJobName"] for s in first.properties["TrainingJobSummaries"]} <= set(names)
    assert trial_job_name("tune-d", 2) not in names  # the interrupted trial is not counted; trial 4 ran instead


def test_ranges_and_strategies_are_mapped_or_refused():
    space = distributions(
        {
            "ContinuousParameterRanges": [
                {"Name": "lr", "MinValue": "0.001", "MaxValue": "0.1", "ScalingType": "Logarithmic"}
            ],
            "IntegerParameterRanges": [{"Name": "epochs", "MinValue": "1", "MaxValue": "3"}],
            "CategoricalParameterRanges": [{"Name": "opt", "Values": ['"sgd"', '"adamw"']}],
        }
    )
    assert space["lr"].log and space["lr"].low == 0.001
    assert (space["epochs"].low, space["epochs"].high) == (1, 3)
    assert space["opt"].choices == ('"sgd"', '"adamw"')
    sampler, pruner = sampler_and_pruner({"Strategy": "Bayesian", "TrainingJobEarlyStoppingType": "Auto"}, space)
    assert isinstance(sampler, optuna.samplers.TPESampler) and isinstance(pruner, MedianStoppingPruner)
    sampler, pruner = sampler_and_pruner({"Strategy": "Hyperband"}, space)
    assert isinstance(pruner, optuna.pruners.HyperbandPruner)
    with pytest.raises(JobError, match="continuous range"):
        sampler_and_pruner({"Strategy": "Grid"}, space)
    with pytest.raises(JobError, match="Strategy 'Annealing'"):
        sampler_and_pruner({"Strategy": "Annealing"}, space)
    with pytest.raises(JobError, match="MinValue 5.0 > MaxValue 1.0"):
        distributions({"ContinuousParameterRanges": [{"Name": "lr", "MinValue": "5", "MaxValue": "1"}]})


def _study_with_earlier_jobs(curves: list[dict[int, float]], state=optuna.trial.TrialState.COMPLETE):
    study = optuna.create_study(direction="maximize", pruner=MedianStoppingPruner())
    for curve in curves:
        study.add_trial(optuna.trial.create_trial(
            state=state, value=curve[max(curve)] if state == optuna.trial.TrialState.COMPLETE else None,
            intermediate_values=curve, params={}, distributions={}))
    return study


def _stopped_after(study, values: list[float]) -> int | None:
    """Report ``values`` epoch by epoch; the epoch at which the rule stops the trial, or None."""
    trial = study.ask()
    for epoch, value in enumerate(values, start=1):
        trial.report(value, epoch)
        if trial.should_prune():
            return epoch
    return None


def test_median_stopping_compares_with_running_averages_as_sagemaker_documents():
    # Earlier jobs' running averages at epoch 2: A (0.2 + 0.6) / 2 = 0.40, B (0.4 + 0.5) / 2 = 0.45 -> median 0.425.
    # optuna's MedianPruner would use the epoch-2 values 0.6 and 0.5 (median 0.55) and stop a 0.43 job.
    study = _study_with_earlier_jobs([{1: 0.2, 2: 0.6, 3: 0.8}, {1: 0.4, 2: 0.5, 3: 0.6}])
    assert _stopped_after(study, [0.31, 0.43, 0.9]) is None
    assert _stopped_after(study, [0.31, 0.42, 0.9]) == 2
    assert _stopped_after(study, [0.29, 0.9, 0.9]) == 1  # epoch 1: the median of 0.2 and 0.4 is 0.3
    assert _stopped_after(study, [float("nan")]) == 1


def test_median_stopping_waits_for_two_earlier_jobs_that_reached_the_epoch():
    study = _study_with_earlier_jobs([{1: 0.9, 2: 0.9}])
    assert _stopped_after(study, [0.1, 0.1]) is None  # one earlier job: no median yet
    study = _study_with_earlier_jobs([{1: 0.9}, {1: 0.8}], state=optuna.trial.TrialState.PRUNED)
    assert _stopped_after(study, [0.86]) is None  # stopped earlier jobs count (median 0.85)
    assert _stopped_after(study, [0.84]) == 1
    assert _stopped_after(study, [0.9, 0.1]) is None  # nobody reached epoch 2
