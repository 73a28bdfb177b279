"""Experiment tracking pieces that need no pipeline run: config, the definition's Environment, the job client
against a real SQLite store and against an unreachable server, and the tracking-ui command line."""

from __future__ import annotations

import json

import pytest

from pipeline.config import ConfigError, load_config
from tests.conftest import ENTRYPOINTS, run_script
from tests.unit.test_definition import no_network  # noqa: F401  (fixture)

ARN = "arn:aws:sagemaker:us-east-1:111122223333:mlflow-tracking-server/image-classification"


def _steps(definition: dict) -> dict[str, dict]:
    found = {}
    for step in definition["Steps"]:
        found[step["Name"]] = step
        for key in ("IfSteps", "ElseSteps"):
            found.update({s["Name"]: s for s in step.get("Arguments", {}).get(key, [])})
    return found


def _environment(step: dict) -> dict:
    arguments = step["Arguments"]
    return (arguments.get("TrainingJobDefinition") or arguments).get("Environment") or {}


def test_config_defaults_and_errors():
    config = load_config(local=True)
    assert config.tracking.enabled and config.tracking.mlflow_uri is None
    assert config.experiment_name == config.pipeline_name
    with pytest.raises(ConfigError, match="tracking.mlflow_uri: .* not an MLflow tracking server ARN"):
        load_config(overrides=["tracking.mlflow_uri=arn:aws:sagemaker:us-east-1:1:mlflow"])
    with pytest.raises(ConfigError, match="not an MLflow tracking URI"):
        load_config(overrides=["tracking.mlflow_uri=my-server"])
    assert load_config(overrides=[f"tracking.mlflow_uri={ARN}"]).tracking.mlflow_uri == ARN


def test_definition_with_a_tracking_server_stays_offline_and_carries_only_static_values(no_network):  # noqa: F811
    """With a tracking server ARN the definition is built offline, twice byte-identical, and the tracked jobs'
    Environment holds the ARN, the experiment and the step name: nothing per execution (the cache key)."""
    arn = ARN
    from pipeline.build import definition_json

    config = load_config(overrides=[f"tracking.mlflow_uri={arn}"])
    first, second = definition_json(config), definition_json(config)
    assert first == second
    steps = _steps(json.loads(first))
    for name in ("tune", "train", "debug", "evaluate"):
        arguments = steps[name]["Arguments"]
        environment = (arguments.get("TrainingJobDefinition") or arguments)["Environment"]
        assert environment["MLFLOW_TRACKING_URI"] == arn
        assert environment["MLFLOW_EXPERIMENT_NAME"] == "image-classification"
        assert environment["PIPELINE_STEP_NAME"] == name
        assert "Get" not in json.dumps(environment), environment  # no execution variable
    assert "MLFLOW_TRACKING_URI" not in json.dumps(steps["split"]["Arguments"])


def test_tracking_off_leaves_no_tracking_variable_in_the_definition(no_network):  # noqa: F811
    from pipeline.build import definition_json

    text = definition_json(load_config(overrides=["tracking.enabled=false"]))
    assert "MLFLOW_" not in text and "PIPELINE_STEP_NAME" not in text


def test_unreachable_server_is_one_warning_and_the_script_goes_on(tmp_path):
    """A job whose tracking server refuses connections prints one warning, logs nothing, and exits 0."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import sys\nsys.path.insert(0, sys.argv[1])\nfrom imgclf import tracking\n"
        "run = tracking.JobRun.start('TrainingJob', name='probe')\n"
        "run.log_params({'lr': 0.1}); run.log_metrics({'validation_accuracy': 0.5}, step=1); run.end()\n"
        "print('active', run.active)\n"
    )
    result = run_script(str(probe), str(ENTRYPOINTS), env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:9",
                                                           "MLFLOW_EXPERIMENT_NAME": "x"})
    output = result.stdout + result.stderr
    assert "active False" in result.stdout
    assert output.count("warning") + output.count("WARNING") == 1, output
    assert "warning: experiment tracking off for this job (MLFLOW_TRACKING_URI=http://127.0.0.1:9)" in output


def test_tracking_ui_serves_the_workspace_store_on_loopback(tmp_path):
    from pipeline.commands.tracking import ui_command
    from pipeline.errors import UserError

    with pytest.raises(UserError, match="no tracking store yet"):
        ui_command(tmp_path, 5000)
    (tmp_path / "mlflow.db").write_bytes(b"")
    command = ui_command(tmp_path, 5123)
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert command[command.index("--backend-store-uri") + 1] == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert command[command.index("--port") + 1] == "5123"
    assert json.dumps(command)  # plain strings


# -- the execution's parent run in AWS, and a restarted job's run ------------------------------------------------

REGION, ACCOUNT = "us-east-1", "123456789012"  # moto's default account


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One SQLite tracking store for the module (creating its tables is the slow part); each test has its own
    experiment."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow').resolve()}/mlflow.db"


def _job_runs(uri: str, experiment: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    return client.search_runs([client.get_experiment_by_name(experiment).experiment_id])


def test_a_restarted_training_job_goes_on_logging_to_its_run(store):
    """A spot restart runs the same training job (same TRAINING_JOB_NAME) again: its metrics go to the run the
    first start created, not to a second run."""
    from imgclf.tracking import JobRun

    environ = {"MLFLOW_TRACKING_URI": store, "MLFLOW_EXPERIMENT_NAME": "restarted",
               "TRAINING_JOB_NAME": "imgclf-train-0001", "PIPELINE_STEP_NAME": "train"}  # fmt: skip
    first = JobRun.start("TrainingJob", environ=environ)
    first.log_metrics({"validation_accuracy": 0.5}, step=1)
    first.end("KILLED")  # the spot interruption
    again = JobRun.start("TrainingJob", environ=environ)
    again.log_metrics({"validation_accuracy": 0.75}, step=2)
    again.end()
    runs = _job_runs(store, "restarted")
    assert [run.info.run_id for run in runs] == [first.run_id] == [again.run_id]
    assert runs[0].info.status == "FINISHED"
    from mlflow.tracking import MlflowClient

    history = MlflowClient(tracking_uri=store).get_metric_history(first.run_id, "validation_accuracy")
    assert sorted((m.step, m.value) for m in history) == [(1, 0.5), (2, 0.75)]
    # another job of the same execution still gets a run of its own
    other = JobRun.start("TrainingJob", environ={**environ, "TRAINING_JOB_NAME": "imgclf-train-0002"})
    assert other.active and other.run_id != first.run_id


def _pipeline_jobs(execution: str, tag_trials: bool) -> dict[str, str]:
    """Jobs in moto as one execution starts them: two tuning trials, the training job, an evaluation job; every
    job tagged by SageMaker with its execution (trials: through their tuning job when ``tag_trials`` is False).
    Returns ``{job name: job ARN}``."""
    import boto3
    from moto.backends import get_backend

    sagemaker, iam = boto3.client("sagemaker", region_name=REGION), boto3.client("iam", region_name=REGION)
    try:
        role = iam.create_role(RoleName="imgclf-execution", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    except iam.exceptions.EntityAlreadyExistsException:
        role = f"arn:aws:iam::{ACCOUNT}:role/imgclf-execution"
    tag = [{"Key": "sagemaker:pipeline-execution-arn", "Value": execution}]
    suffix = execution.rsplit("/", 1)[1]
    tuning = f"imgclf-tune-{suffix}"
    tuning_arn = sagemaker.create_hyper_parameter_tuning_job(
        HyperParameterTuningJobName=tuning, Tags=tag,
        HyperParameterTuningJobConfig={"Strategy": "Bayesian", "ResourceLimits": {"MaxNumberOfTrainingJobs": 2,
                                                                                 "MaxParallelTrainingJobs": 2}},
    )["HyperParameterTuningJobArn"]  # fmt: skip
    jobs = {}
    for name, tags in ((f"{tuning}-001-0a1b2c3d", tag if tag_trials else []),
                       (f"{tuning}-002-4e5f6a7b", tag if tag_trials else []), (f"imgclf-train-{suffix}", tag)):
        jobs[name] = sagemaker.create_training_job(
            TrainingJobName=name, RoleArn=role, Tags=tags,
            AlgorithmSpecification={"TrainingImage": "pytorch", "TrainingInputMode": "File"},
            OutputDataConfig={"S3OutputPath": "s3://sagemaker-image-classification/models"},
            ResourceConfig={"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 30},
            StoppingCondition={"MaxRuntimeInSeconds": 3600},
        )["TrainingJobArn"]  # fmt: skip
        if name.startswith(tuning):
            # what DescribeTrainingJob says of a trial (moto leaves TuningJobArn out of the jobs it creates)
            backend = get_backend("sagemaker")[ACCOUNT][REGION]
            backend.training_jobs[name].tuning_job_arn = tuning_arn
    name = f"imgclf-evaluate-{suffix}"
    jobs[name] = sagemaker.create_processing_job(
        ProcessingJobName=name, RoleArn=role, Tags=tag, AppSpecification={"ImageUri": "pytorch"},
        ProcessingResources={"ClusterConfig": {"InstanceCount": 1, "InstanceType": "ml.m5.large",
                                               "VolumeSizeInGB": 30}},
    )["ProcessingJobArn"]  # fmt: skip
    return jobs


def _start_jobs(tmp_path, store: str, jobs: dict[str, str]) -> dict[str, str]:
    """Start every job's run at the same moment (threads behind a barrier, as parallel trials start); the processing
    job finds its ARN in its processingjobconfig.json like in a container. Returns ``{job name: run id}``."""
    import threading

    from imgclf.tracking import JobRun

    barrier, started = threading.Barrier(len(jobs)), {}

    def start(name: str, arn: str) -> None:
        environ, script = {"MLFLOW_TRACKING_URI": store, "MLFLOW_EXPERIMENT_NAME": "image-classification"}, None
        if ":training-job/" in arn:
            environ.update(TRAINING_JOB_NAME=name, TRAINING_JOB_ARN=arn, PIPELINE_STEP_NAME="train")
        else:
            root = tmp_path / name / "opt" / "ml"
            (root / "config").mkdir(parents=True)
            (root / "config" / "processingjobconfig.json").write_text(
                json.dumps({"ProcessingJobName": name, "ProcessingJobArn": arn}))
            script = str(root / "processing" / "input" / "code" / "evaluate.py")
        barrier.wait()
        run = JobRun.start("TrainingJob" if script is None else "ProcessingJob", environ=environ, script=script)
        started[name] = run.run_id
        run.end()

    threads = [threading.Thread(target=start, args=item) for item in jobs.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return started


def test_jobs_of_an_aws_execution_nest_under_one_parent_run(aws_env, tmp_path, store):
    """In AWS nothing hands the jobs a parent run: each job reads its execution from its own tags and finds or
    creates the execution's run. Jobs starting together agree on one parent; the next execution gets its own. The
    first execution's trials carry the tag themselves, the second's only through their tuning job."""
    prefix = f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:pipeline/image-classification/execution/"
    parents = {}
    for execution, tag_trials in ((f"{prefix}a1b2c3d4e5f6", True), (f"{prefix}f6e5d4c3b2a1", False)):
        jobs = _pipeline_jobs(execution, tag_trials)
        started = _start_jobs(tmp_path, store, jobs)
        assert set(started) == set(jobs) and all(started.values()), started
        runs = {run.info.run_id: run for run in _job_runs(store, "image-classification")}
        assert {runs[run_id].data.tags["sagemaker.job_name"] for run_id in started.values()} == set(jobs)
        (parent,) = {runs[run_id].data.tags.get("mlflow.parentRunId") for run_id in started.values()}
        assert parent in runs and runs[parent].data.tags["sagemaker.pipeline_execution_arn"] == execution
        assert runs[parent].data.tags["mlflow.runName"] == "image-classification-" + execution.rsplit("/", 1)[1]
        parents[execution] = parent
        # one live run per execution: the parallel jobs' duplicates were deleted
        assert len([run for run in runs.values() if "mlflow.parentRunId" not in run.data.tags]) == len(parents)
    assert len(set(parents.values())) == 2


def test_a_job_whose_tags_cannot_be_read_logs_unnested_after_one_warning(aws_env, store, capsys):
    """ListTags refused (here: a job SageMaker does not know): the job says so once and still logs its run."""
    from imgclf.tracking import JobRun

    arn = f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:training-job/imgclf-train-unknown"
    run = JobRun.start("TrainingJob", environ={"MLFLOW_TRACKING_URI": store, "MLFLOW_EXPERIMENT_NAME": "untagged",
                                               "TRAINING_JOB_NAME": "imgclf-train-unknown", "TRAINING_JOB_ARN": arn})
    run.end()
    error = capsys.readouterr().err
    assert error.count("warning") == 1 and f"no parent run for this job (the tags of {arn}" in error, error
    (logged,) = _job_runs(store, "untagged")
    assert logged.info.run_id == run.run_id and "mlflow.parentRunId" not in logged.data.tags


def test_a_cache_hit_is_tagged_on_the_execution_run_with_its_source(store):
    """A step record's CacheHitResult (execution.json's key) tags the parent run with the source execution."""
    from mlflow.tracking import MlflowClient

    from pipeline.local.tracking import ExecutionRun

    client = MlflowClient(tracking_uri=store)
    experiment_id = client.create_experiment("cache-hit-tag")
    run = ExecutionRun(client, client.create_run(experiment_id).info.run_id, store, "cache-hit-tag", experiment_id)
    source = "arn:aws:sagemaker:us-east-1:000000000000:pipeline/p/execution/earlier"
    run.step_finished({"StepName": "train", "StepType": "Training", "StepStatus": "Succeeded", "Properties": {},
                       "CacheHitResult": {"SourcePipelineExecutionArn": source}})  # fmt: skip
    tags = client.get_run(run.run_id).data.tags
    assert tags["pipeline.step.train"] == "Succeeded" and tags["pipeline.step.train.cache_hit"] == source
