"""The executor on small definitions of script processing steps: order, parallelism, caching, branches, errors."""

from __future__ import annotations

import json
import textwrap
from datetime import datetime

import pytest

from pipeline.local.executor import ExecutionError, LocalExecution, RunOptions, iso_duration_seconds, step_graph
from pipeline.local.store import Store

# Sleeps, then writes the number of files it read and the time it ran: enough to see order and overlap.
SCRIPT = textwrap.dedent("""
    import argparse, json, pathlib, sys, time
    parser = argparse.ArgumentParser()
    parser.add_argument("--input")
    parser.add_argument("--out")
    parser.add_argument("--value", type=float, default=0.5)
    args = parser.parse_args()
    start = time.time()
    time.sleep(0.5)
    files = [p for p in pathlib.Path(args.input).rglob("*") if p.is_file()]
    report = {"count": len(files), "value": args.value, "start": start, "end": time.time()}
    pathlib.Path(args.out, "report.json").write_text(json.dumps(report))
    print("wrote", report)
""")


def _processing(name: str, input_uri, value="0.5", cache=True) -> dict:
    step = {
        "Name": name,
        "Type": "Processing",
        "Arguments": {
            "AppSpecification": {
                "ImageUri": "img",
                "ContainerEntrypoint": ["python3", "/opt/ml/processing/input/code/script.py"],
                "ContainerArguments": ["--input", "/opt/ml/processing/in", "--out", "/opt/ml/processing/out",
                                       "--value", value],
            },
            "ProcessingInputs": [
                {"InputName": "in", "S3Input": {"S3Uri": input_uri, "LocalPath": "/opt/ml/processing/in"}},
                {"InputName": "code", "S3Input": {"S3Uri": "s3://b/code/script.py",
                                                  "LocalPath": "/opt/ml/processing/input/code"}},
            ],
            "ProcessingOutputConfig": {"Outputs": [{"OutputName": "out", "S3Output": {
                "S3Uri": f"s3://b/out/{name}", "LocalPath": "/opt/ml/processing/out"}}]},
        },
        "PropertyFiles": [{"PropertyFileName": "Report", "OutputName": "out", "FilePath": "report.json"}],
    }  # fmt: skip
    if cache:
        step["CacheConfig"] = {"Enabled": True, "ExpireAfter": "P1D"}
    return step


def _definition() -> dict:
    """a and b are independent; c reads both; gate checks c's value against the Threshold parameter."""
    value = {"Std:JsonGet": {"PropertyFile": {"Get": "Steps.c.PropertyFiles.Report"}, "Path": "value"}}
    return {
        "Version": "2020-12-01",
        "Parameters": [{"Name": "Threshold", "Type": "Float", "DefaultValue": 0.3},
                       {"Name": "Value", "Type": "String", "DefaultValue": "0.5"}],
        "Steps": [
            _processing("a", "s3://b/data"),
            _processing("b", "s3://b/data"),
            _processing("c", {"Get": "Steps.a.ProcessingOutputConfig.Outputs['out'].S3Output.S3Uri"},
                        value={"Get": "Parameters.Value"}),
            {"Name": "gate", "Type": "Condition", "DependsOn": ["b"], "Arguments": {
                "Conditions": [{"Type": "GreaterThanOrEqualTo", "LeftValue": value,
                                "RightValue": {"Get": "Parameters.Threshold"}}],
                "IfSteps": [],
                "ElseSteps": [{"Name": "stop", "Type": "Fail", "Arguments": {"ErrorMessage": {"Std:Join": {
                    "On": " ", "Values": ["value", value, "below", {"Get": "Parameters.Threshold"}]}}}}]}},
        ],
    }  # fmt: skip


@pytest.fixture
def options(tmp_path) -> RunOptions:
    store = Store(tmp_path / "store")
    store.put_bytes("s3://b/code/script.py", SCRIPT.encode())
    store.put_bytes("s3://b/data/1.txt", b"1")
    store.put_bytes("s3://b/data/2.txt", b"2")
    return RunOptions(store=tmp_path / "store", runs=tmp_path / "runs", cpus=2)


def _steps(record: dict) -> dict:
    return {s["StepName"]: s for s in record["Steps"]}


def test_independent_steps_overlap_and_dependents_wait(options):
    record = LocalExecution.start(_definition(), options).run()
    assert record["PipelineExecutionStatus"] == "Succeeded", record.get("FailureReason")
    store = Store(options.store)
    a, b, c = (store.read_json(f"s3://b/out/{n}/report.json") for n in "abc")
    assert a["start"] < b["end"] and b["start"] < a["end"]  # a and b ran at the same time
    assert c["start"] >= a["end"]  # c waited for the output it reads
    assert c["count"] == 1  # c's input was a's output (report.json), resolved from a's properties
    steps = _steps(record)
    assert steps["gate"]["Properties"]["Outcome"] == "True"
    assert steps["stop"]["StepStatus"] == "Skipped"
    assert datetime.fromisoformat(steps["gate"]["StartTime"]) >= datetime.fromisoformat(steps["b"]["EndTime"])
    saved = json.loads((options.runs / record["PipelineExecutionId"] / "execution.json").read_text())
    assert saved == json.loads(json.dumps(record, default=str))


def _cache_sources(record: dict) -> dict:
    """step name -> the execution id its cache hit came from (None: it ran)."""
    return {
        name: (step["CacheHitResult"] or {}).get("SourcePipelineExecutionArn", "").rsplit("/", 1)[-1] or None
        for name, step in _steps(record).items()
        if step["StepType"] == "Processing"
    }


def test_cache_hits_name_their_source_and_key_on_uris_not_on_the_bytes_behind_them(options):
    first = LocalExecution.start(_definition(), options).run()
    second = LocalExecution.start(_definition(), options).run()
    assert _cache_sources(second) == dict.fromkeys("abc", first["PipelineExecutionId"])
    assert _steps(second)["a"]["Properties"] == _steps(first)["a"]["Properties"]
    assert first["PipelineExecutionId"] in (options.runs / second["PipelineExecutionId"] / "summary.txt").read_text()
    # new objects under the same input URI: SageMaker's key holds the URI, not the data, so still a cache hit
    Store(options.store).put_bytes("s3://b/data/3.txt", b"3")
    third = LocalExecution.start(_definition(), options).run()
    assert _cache_sources(third) == dict.fromkeys("abc", first["PipelineExecutionId"])
    assert Store(options.store).read_json("s3://b/out/a/report.json")["count"] == 2


def test_only_the_documented_attributes_are_in_the_key(options):
    first = LocalExecution.start(_definition(), options).run()
    outside = _definition()  # instance type, output location, property files: not cache key attributes
    a = outside["Steps"][0]
    a["Arguments"]["ProcessingResources"] = {"ClusterConfig": {"InstanceType": "ml.m5.24xlarge"}}
    a["Arguments"]["ProcessingOutputConfig"]["Outputs"][0]["S3Output"]["S3Uri"] = "s3://b/elsewhere/a"
    assert _cache_sources(LocalExecution.start(outside, options).run())["a"] == first["PipelineExecutionId"]
    inside = _definition()  # Environment is one
    inside["Steps"][0]["Arguments"]["Environment"] = {"MODE": "new"}
    assert _cache_sources(LocalExecution.start(inside, options).run())["a"] is None


def test_a_new_input_uri_reruns_split_but_a_fixed_output_prefix_hands_downstream_a_stale_hit(options):
    """Defect 1 in miniature: a re-runs on new data, but writes where it wrote before, so c's resolved input URI
    is unchanged and c is a cache hit on the old data; with a per-execution output prefix c runs again."""
    def definition(output_uri) -> dict:
        built = _definition()
        built["Parameters"].append({"Name": "Input", "Type": "String", "DefaultValue": "s3://b/data"})
        built["Steps"][0]["Arguments"]["ProcessingInputs"][0]["S3Input"]["S3Uri"] = {"Get": "Parameters.Input"}
        built["Steps"][0]["Arguments"]["ProcessingOutputConfig"]["Outputs"][0]["S3Output"]["S3Uri"] = output_uri
        return built

    store = Store(options.store)
    store.put_bytes("s3://b/data2/only.txt", b"x")
    fixed = definition("s3://b/out/a")
    first = LocalExecution.start(fixed, options).run()
    options.parameters = {"Input": "s3://b/data2"}
    second = LocalExecution.start(fixed, options).run()
    assert _cache_sources(second) == {"a": None, "b": first["PipelineExecutionId"], "c": first["PipelineExecutionId"]}

    execution_id = {"Get": "Execution.PipelineExecutionId"}
    per_execution = definition({"Std:Join": {"On": "/", "Values": ["s3://b/out", execution_id, "a"]}})
    store.put_bytes("s3://b/data3/1.txt", b"1")
    store.put_bytes("s3://b/data3/2.txt", b"2")
    store.put_bytes("s3://b/data3/3.txt", b"3")
    options.parameters = {"Input": "s3://b/data3"}
    third = LocalExecution.start(per_execution, options).run()
    assert _cache_sources(third) == {"a": None, "b": first["PipelineExecutionId"], "c": None}
    assert store.read_json(f"s3://b/out/{third['PipelineExecutionId']}/a/report.json")["count"] == 3


def test_expire_after_and_never_cached_step_types(options):
    definition = _definition()
    definition["Steps"][3]["CacheConfig"] = {"Enabled": True, "ExpireAfter": "P1D"}  # the ConditionStep
    first = LocalExecution.start(definition, options).run()
    for path in (options.store / ".cache").rglob("*.json"):  # every cache entry two days old: expired
        entry = json.loads(path.read_text())
        path.write_text(json.dumps({**entry, "Time": entry["Time"] - 2 * 86400}))
    second = LocalExecution.start(definition, options).run()
    assert _cache_sources(second) == dict.fromkeys("abc")
    options.parameters = {"Threshold": "0.9"}  # a Condition step is never cached, whatever its CacheConfig says
    third = _steps(LocalExecution.start(definition, options).run())
    assert third["gate"]["Properties"]["Outcome"] == "False" and third["stop"]["StepStatus"] == "Failed"
    assert third["gate"]["CacheHitResult"] is None and third["a"]["CacheHitResult"] is not None
    assert first["PipelineExecutionStatus"] == "Succeeded"


def test_fail_step_fails_the_execution_with_its_message_and_resume_reruns_only_the_rest(options):
    options.parameters = {"Value": "0.1"}
    execution = LocalExecution.start(_definition(), options)
    record = execution.run()
    assert record["PipelineExecutionStatus"] == "Failed"
    assert record["FailureReason"] == "Step stop: value 0.1 below 0.3"
    first = _steps(record)
    resumed = _steps(LocalExecution.resume(execution.id, RunOptions(store=options.store, runs=options.runs)).run())
    for name in ("a", "b", "c", "gate"):
        assert resumed[name]["StartTime"] == first[name]["StartTime"]  # kept, not run again
    assert resumed["stop"]["StepStatus"] == "Failed" and resumed["stop"]["StartTime"] != first["stop"]["StartTime"]


def test_a_missing_input_fails_its_step_and_stops_dependents(options):
    definition = _definition()
    definition["Steps"][0]["Arguments"]["ProcessingInputs"][0]["S3Input"]["S3Uri"] = "s3://b/missing"
    record = LocalExecution.start(definition, options).run()
    steps = _steps(record)
    assert steps["a"]["StepStatus"] == "Failed" and "nothing in the store" in steps["a"]["FailureReason"]
    assert steps["c"]["StepStatus"] == "NotStarted" and "a did not succeed" in steps["c"]["Detail"]
    assert record["FailureReason"].startswith("Step a:")


def test_definition_errors_are_named():
    definition = _definition()
    definition["Steps"][0]["DependsOn"] = ["c"]
    with pytest.raises(ExecutionError, match="cycle"):
        step_graph(definition)
    with pytest.raises(ExecutionError, match="type 'EMR' is not supported"):
        step_graph({"Steps": [{"Name": "x", "Type": "EMR"}]})
    with pytest.raises(ExecutionError, match="unknown step"):
        step_graph({"Steps": [{"Name": "x", "Type": "Fail", "DependsOn": ["ghost"]}]})
    assert iso_duration_seconds("P30D") == 30 * 86400
    assert iso_duration_seconds("PT1H30M") == 5400
    with pytest.raises(ExecutionError, match="ISO 8601"):
        iso_duration_seconds("30 days")


def test_resume_of_an_unknown_execution_lists_the_known_ones(options):
    execution = LocalExecution.start(_definition(), options)
    execution.run()
    with pytest.raises(ExecutionError, match=execution.id):
        LocalExecution.resume("nope", options)


def test_condition_fail_and_model_steps_record_their_outcomes(options):
    # no job runs: the handlers of the steps that only evaluate expressions, and what each writes on its record
    threshold = {"Get": "Parameters.Threshold"}
    definition = {
        "Version": "2020-12-01",
        "Parameters": [{"Name": "Threshold", "Type": "Float", "DefaultValue": 0.3}],
        "Steps": [
            {"Name": "model", "Type": "Model", "Arguments": {"ExecutionRoleArn": "role", "PrimaryContainer": {}}},
            {"Name": "gate", "Type": "Condition", "Arguments": {
                "Conditions": [{"Type": "LessThan", "LeftValue": threshold, "RightValue": 0.5},
                               {"Type": "Equals", "LeftValue": threshold, "RightValue": 0.9},
                               {"Type": "GreaterThan", "LeftValue": threshold, "RightValue": 0.1}],
                "IfSteps": [{"Name": "never", "Type": "Fail", "Arguments": {"ErrorMessage": "not reached"}}],
                "ElseSteps": [{"Name": "stop", "Type": "Fail", "Arguments": {"ErrorMessage": {"Std:Join": {
                    "On": " ", "Values": ["threshold", threshold]}}}}]}},
        ],
    }  # fmt: skip
    execution = LocalExecution.start(definition, options)
    record = execution.run()
    steps = _steps(record)
    # every condition is evaluated and listed, also after the first False; the outcome is their AND
    assert steps["gate"]["Metadata"] == {"Condition": {"Outcome": "False", "Conditions": [
        {"Type": "LessThan", "Outcome": True}, {"Type": "Equals", "Outcome": False},
        {"Type": "GreaterThan", "Outcome": True}]}}  # fmt: skip
    assert (steps["gate"]["StepStatus"], steps["gate"]["Properties"], steps["gate"]["Detail"]) == (
        "Succeeded", {"Outcome": "False"}, "Outcome False")
    assert steps["never"]["StepStatus"] == "Skipped" and "Metadata" not in steps["never"]
    assert (steps["stop"]["StepStatus"], steps["stop"]["FailureReason"], steps["stop"]["Metadata"]) == (
        "Failed", "threshold 0.3", {"Fail": {"ErrorMessage": "threshold 0.3"}})
    assert steps["stop"]["Properties"] == {} and steps["stop"]["Jobs"] == []
    name = f"model-{execution.id}"
    assert steps["model"]["Properties"] == {"ExecutionRoleArn": "role", "PrimaryContainer": {}, "ModelName": name,
                                            "ModelArn": f"arn:aws:sagemaker:us-east-1:000000000000:model/{name}"}
    assert steps["model"]["CacheHitResult"] is None and steps["model"]["Detail"] == ""
    assert record["PipelineExecutionStatus"] == "Failed" and record["FailureReason"] == "Step stop: threshold 0.3"
    on_disk = json.loads((execution.run_dir / "execution.json").read_text())
    assert on_disk["Steps"] == record["Steps"]  # the statuses serialise as SageMaker's plain strings


def test_the_endpoint_outcome_callback_answers_as_the_deploy_lambda_does():
    """Local mode answers the CallbackStep with deploy_endpoint's rule: Unchanged/Skipped/InService succeed with
    their outputs, RolledBack/Failed fail with the reason, an in-progress status cannot be waited for locally."""
    from pipeline.local.callback import answer

    done = answer("endpoint_outcome", {"endpoint_name": "e", "status": "Unchanged", "reason": "already serves it"})
    assert done.status == "Succeeded"
    assert done.properties == {"OutputParameters": {"status": "Unchanged", "reason": "already serves it"}}
    rolled_back = answer("endpoint_outcome", {"endpoint_name": "e", "status": "RolledBack", "reason": "5xx alarm"})
    assert rolled_back.status == "Failed" and rolled_back.failure_reason == "endpoint e RolledBack: 5xx alarm"
    waiting = answer("endpoint_outcome", {"endpoint_name": "e", "status": "Creating"})
    assert waiting.status == "Failed" and "'Creating', which local mode cannot wait for" in waiting.failure_reason
