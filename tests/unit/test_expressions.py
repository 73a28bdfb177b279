"""The local expression evaluator on a definition that the SageMaker SDK itself wrote (offline session)."""

from __future__ import annotations

import json

import pytest

from pipeline.local import expressions
from pipeline.local.executor import ExecutionError, resolve_parameters, step_graph
from pipeline.local.expressions import Context, ExpressionError

BUCKET = "bkt"
CODE = f"s3://{BUCKET}/code/abc/sourcedir.tar.gz"
ROLE = "arn:aws:iam::111122223333:role/test"


@pytest.fixture(scope="module")
def definition() -> dict:
    """A pipeline with every construct local mode evaluates: parameters, Join, JsonGet, conditions, tuning."""
    from sagemaker.inputs import TrainingInput
    from sagemaker.processing import ProcessingInput, ProcessingOutput, ScriptProcessor
    from sagemaker.pytorch import PyTorch
    from sagemaker.tuner import CategoricalParameter, ContinuousParameter, HyperparameterTuner, IntegerParameter
    from sagemaker.workflow.condition_step import ConditionStep
    from sagemaker.workflow.conditions import (
        ConditionEquals,
        ConditionGreaterThanOrEqualTo,
        ConditionIn,
        ConditionLessThan,
        ConditionNot,
        ConditionOr,
    )
    from sagemaker.workflow.execution_variables import ExecutionVariables
    from sagemaker.workflow.fail_step import FailStep
    from sagemaker.workflow.functions import Join, JsonGet
    from sagemaker.workflow.parameters import ParameterFloat, ParameterInteger, ParameterString
    from sagemaker.workflow.pipeline import Pipeline
    from sagemaker.workflow.properties import PropertyFile
    from sagemaker.workflow.steps import ProcessingStep, TrainingStep, TuningStep

    from pipeline.session import OfflinePipelineSession

    session = OfflinePipelineSession(region="us-east-1", bucket=BUCKET)
    data = ParameterString("InputDataUri", default_value=f"s3://{BUCKET}/data")
    threshold = ParameterFloat("AccuracyThreshold", default_value=0.9)
    count = ParameterInteger("Count", default_value=3)
    mode = ParameterString("Mode", default_value="full")
    processor = ScriptProcessor(
        image_uri="img",
        command=["python3"],
        role=ROLE,
        instance_type="ml.m5.large",
        instance_count=1,
        sagemaker_session=session,
    )
    prepare = ProcessingStep(
        "prepare",
        step_args=processor.run(
            code=f"s3://{BUCKET}/code/prepare.py",
            inputs=[ProcessingInput(source=data, destination="/opt/ml/processing/in")],
            outputs=[
                ProcessingOutput(
                    output_name="train", source="/opt/ml/processing/train", destination=f"s3://{BUCKET}/out/train"
                )
            ],
        ),
    )
    estimator = PyTorch(
        entry_point="train.py",
        source_dir=CODE,
        framework_version="2.1",
        py_version="py310",
        role=ROLE,
        instance_type="ml.m5.large",
        instance_count=1,
        sagemaker_session=session,
        output_path=f"s3://{BUCKET}/models",
        hyperparameters={"model": "resnet18"},
        metric_definitions=[{"Name": "validation:accuracy", "Regex": "acc=([0-9.]+)"}],
        disable_profiler=True,
        debugger_hook_config=False,
    )
    tuner = HyperparameterTuner(
        estimator,
        "validation:accuracy",
        {
            "lr": ContinuousParameter(0.001, 0.1, scaling_type="Logarithmic"),
            "batch-size": CategoricalParameter([32, 64]),
            "epochs": IntegerParameter(1, 3),
        },
        metric_definitions=[{"Name": "validation:accuracy", "Regex": "acc=([0-9.]+)"}],
        max_jobs=4,
        max_parallel_jobs=2,
    )
    channel = TrainingInput(prepare.properties.ProcessingOutputConfig.Outputs["train"].S3Output.S3Uri)
    tune = TuningStep("tune", step_args=tuner.fit(inputs={"train": channel}))
    tuned = {k: tune.properties.BestTrainingJob.TunedHyperParameters[k] for k in ("lr", "batch-size", "epochs")}
    estimator.set_hyperparameters(model="resnet18", **tuned)
    train = TrainingStep("train", step_args=estimator.fit(inputs={"train": channel}))
    report = PropertyFile(name="EvaluationReport", output_name="evaluation", path="evaluation.json")
    evaluate = ProcessingStep(
        "evaluate",
        property_files=[report],
        step_args=processor.run(
            code=f"s3://{BUCKET}/code/evaluate.py",
            inputs=[
                ProcessingInput(
                    source=train.properties.ModelArtifacts.S3ModelArtifacts, destination="/opt/ml/processing/model"
                ),
                ProcessingInput(
                    source=tune.get_top_model_s3_uri(1, BUCKET, "models"), destination="/opt/ml/processing/second"
                ),
            ],
            outputs=[
                ProcessingOutput(
                    output_name="evaluation",
                    source="/opt/ml/processing/evaluation",
                    destination=Join(
                        on="/", values=[f"s3://{BUCKET}/eval", ExecutionVariables.PIPELINE_EXECUTION_ID]
                    ),
                )
            ],
        ),
    )
    accuracy = JsonGet(
        step_name="evaluate", property_file=report, json_path="multiclass_classification_metrics.accuracy.value"
    )
    fail = FailStep("gate_failed", error_message=Join(on=" ", values=["accuracy", accuracy, "is below", threshold]))
    gate = ConditionStep(
        "gate",
        conditions=[
            ConditionGreaterThanOrEqualTo(left=accuracy, right=threshold),
            ConditionOr(
                conditions=[
                    ConditionIn(value=mode, in_values=["full", "fast"]),
                    ConditionLessThan(left=count, right=2),
                ]
            ),
            ConditionNot(expression=ConditionEquals(left=mode, right="off")),
        ],
        if_steps=[],
        else_steps=[fail],
    )
    pipeline = Pipeline(
        "expressions-test",
        parameters=[data, threshold, count, mode],
        steps=[prepare, tune, train, evaluate, gate],
        sagemaker_session=session,
    )
    return json.loads(pipeline.definition())


def _steps(definition: dict) -> dict:
    found = {}
    for step in definition["Steps"]:
        found[step["Name"]] = step
        for key in ("IfSteps", "ElseSteps"):
            for inner in step.get("Arguments", {}).get(key, []):
                found[inner["Name"]] = inner
    return found


TUNE_PROPERTIES = {
    "BestTrainingJob": {
        "TrainingJobName": "tune-001-aaaa",
        "TunedHyperParameters": {"lr": "0.0123", "batch-size": '"64"', "epochs": "2"},
    },
    "TrainingJobSummaries": [{"TrainingJobName": "tune-001-aaaa"}, {"TrainingJobName": "tune-003-cccc"}],
}


def _context(parameters: dict, accuracy: float) -> Context:
    properties = {
        "prepare": {
            "ProcessingOutputConfig": {
                "Outputs": [{"OutputName": "train", "S3Output": {"S3Uri": f"s3://{BUCKET}/out/train"}}]
            }
        },
        "tune": TUNE_PROPERTIES,
        "train": {"ModelArtifacts": {"S3ModelArtifacts": f"s3://{BUCKET}/models/train-x/output/model.tar.gz"}},
    }
    files = {
        ("evaluate", "EvaluationReport"): {"multiclass_classification_metrics": {"accuracy": {"value": accuracy}}}
    }

    def step_properties(name):
        if name not in properties:
            raise ExpressionError(f"no properties for {name}")
        return properties[name]

    return Context(
        parameters=parameters,
        execution={"PipelineExecutionId": "exec123"},
        step_properties=step_properties,
        property_file=lambda s, f: files[(s, f)],
    )


def test_tuned_hyperparameters_reach_the_training_step(definition):
    steps = _steps(definition)
    parameters = resolve_parameters(definition["Parameters"], {})
    arguments = expressions.evaluate(steps["train"]["Arguments"], _context(parameters, 0.95))
    hyperparameters = arguments["HyperParameters"]
    assert hyperparameters["lr"] == "0.0123"
    assert hyperparameters["batch-size"] == '"64"'
    assert hyperparameters["epochs"] == "2"
    assert arguments["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"] == f"s3://{BUCKET}/out/train"


def test_join_of_execution_id_and_top_k_model_uri(definition):
    steps = _steps(definition)
    parameters = resolve_parameters(definition["Parameters"], {})
    arguments = expressions.evaluate(steps["evaluate"]["Arguments"], _context(parameters, 0.95))
    inputs = {i["S3Input"]["LocalPath"]: i["S3Input"]["S3Uri"] for i in arguments["ProcessingInputs"]}
    assert inputs["/opt/ml/processing/model"] == f"s3://{BUCKET}/models/train-x/output/model.tar.gz"
    assert inputs["/opt/ml/processing/second"] == f"s3://{BUCKET}/models/tune-003-cccc/output/model.tar.gz"
    output = arguments["ProcessingOutputConfig"]["Outputs"][0]["S3Output"]["S3Uri"]
    assert output == f"s3://{BUCKET}/eval/exec123"


@pytest.mark.parametrize(
    ("overrides", "accuracy", "outcome"),
    [
        ({}, 0.95, True),
        ({}, 0.85, False),  # below the default threshold 0.9
        ({"AccuracyThreshold": "1.01"}, 0.99, False),
        ({"Mode": "other", "Count": "5"}, 0.95, False),  # Or: not In [full, fast] and not Count < 2
        ({"Mode": "other", "Count": "1"}, 0.95, True),
        ({"Mode": "off"}, 0.95, False),  # Not Equals off
    ],
)
def test_condition_step_outcome(definition, overrides, accuracy, outcome):
    gate = _steps(definition)["gate"]
    parameters = resolve_parameters(definition["Parameters"], overrides)
    assert expressions.evaluate_conditions(gate["Arguments"]["Conditions"], _context(parameters, accuracy)) is outcome


def test_fail_step_message_carries_the_values(definition):
    fail = _steps(definition)["gate_failed"]
    parameters = resolve_parameters(definition["Parameters"], {"AccuracyThreshold": "1.01"})
    message = expressions.evaluate(fail["Arguments"]["ErrorMessage"], _context(parameters, 0.97))
    assert message == "accuracy 0.97 is below 1.01"


def test_graph_order_and_dependencies(definition):
    nodes = step_graph(definition)
    order = list(nodes)
    assert order.index("prepare") < order.index("tune") < order.index("train") < order.index("evaluate")
    assert order.index("evaluate") < order.index("gate") < order.index("gate_failed")
    assert nodes["train"].depends_on == {"prepare", "tune"}
    assert nodes["evaluate"].depends_on == {"train", "tune"}
    assert nodes["gate"].depends_on == {"evaluate"}
    assert nodes["gate_failed"].branch == ("gate", "ElseSteps")


def test_errors_name_what_is_missing(definition):
    context = _context({"A": 1}, 0.9)
    with pytest.raises(ExpressionError, match="no pipeline parameter 'Nope'"):
        expressions.evaluate({"Get": "Parameters.Nope"}, context)
    with pytest.raises(ExpressionError, match="no properties for ghost"):
        expressions.evaluate({"Get": "Steps.ghost.ModelArtifacts.S3ModelArtifacts"}, context)
    with pytest.raises(ExpressionError, match="no key 'Missing'"):
        expressions.evaluate({"Get": "Steps.train.ModelArtifacts.Missing"}, context)
    with pytest.raises(ExpressionError, match="index 5 out of range"):
        expressions.evaluate({"Get": "Steps.tune.TrainingJobSummaries[5].TrainingJobName"}, context)
    with pytest.raises(ExpressionError, match="unknown condition type"):
        expressions.evaluate_condition({"Type": "Xor"}, context)
    with pytest.raises(ExecutionError, match="not a valid Integer"):
        resolve_parameters(definition["Parameters"], {"Count": "three"})
    with pytest.raises(ExecutionError, match="not a parameter of this pipeline"):
        resolve_parameters(definition["Parameters"], {"Treshold": "1"})


def test_parse_path_handles_names_quotes_and_indexes():
    assert expressions.parse_path("Outputs['train'].S3Output.S3Uri") == ["Outputs", "train", "S3Output", "S3Uri"]
    assert expressions.parse_path('A["b-c"][0].d') == ["A", "b-c", 0, "d"]
    with pytest.raises(ExpressionError):
        expressions.parse_path("a..b[")
