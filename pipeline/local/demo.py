"""``run-local --demo``: after a run, serve the newest Approved model package and send it real test images.

Steps: find the RegisterModel step's model package group in the execution, take the group's newest
``Approved`` version from the local registry (SHA-256 checked), start the local endpoint on its
``model.tar.gz``, POST a few images from the split's ``test`` output (one per class, in class order) as
``image/png``, print prediction vs true label, stop the endpoint, record the answers in
``runs/<id>/endpoint.json`` (``[{"image", "true_label", "predicted", "probability", "status"}]``, read by the
report), print the test accuracy from the evaluation PropertyFile and write the run's report
(``pipeline.local.report.write_report(run_dir)``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from pipeline.local import report
from pipeline.local.registry import ModelRegistry, RegistryError
from pipeline.local.status import StepStatus
from pipeline.local.store import Store, StoreError, atomic_write_json
from pipeline.serving.server import EndpointStartError, start_in_background

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def top_prediction(response: Any) -> tuple[str | None, float | None]:
    """The first ``{"label", "probability"}`` found in an /invocations JSON response (any nesting)."""
    if isinstance(response, dict):
        if "label" in response:
            return str(response["label"]), response.get("probability")
        for value in response.values():
            found = top_prediction(value)
            if found[0] is not None:
                return found
    elif isinstance(response, list):
        for value in response:
            found = top_prediction(value)
            if found[0] is not None:
                return found
    return None, None


def sample_images(test_dir: Path, count: int) -> list[tuple[Path, str]]:
    """Up to ``count`` images of an ImageFolder tree, one class after another: ``[(path, true label)]``."""
    classes = sorted(p for p in test_dir.iterdir() if p.is_dir()) if test_dir.is_dir() else []
    per_class = {c.name: sorted(f for f in c.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES) for c in classes}
    picked: list[tuple[Path, str]] = []
    depth = 0
    while len(picked) < count and any(len(files) > depth for files in per_class.values()):
        for label, files in per_class.items():
            if len(files) > depth and len(picked) < count:
                picked.append((files[depth], label))
        depth += 1
    return picked


def _step(record: dict, kind: str) -> dict | None:
    return next((s for s in record["Steps"] if s["StepType"] == kind and s["StepStatus"] == StepStatus.SUCCEEDED), None)


def _test_uri(record: dict) -> str | None:
    for step in record["Steps"]:
        if step["StepType"] == "Processing" and step["StepStatus"] == StepStatus.SUCCEEDED:
            for output in step["Properties"].get("ProcessingOutputConfig", {}).get("Outputs", []):
                if output.get("OutputName") == "test":
                    return output["S3Output"]["S3Uri"]
    return None


def _accuracy(record: dict, definition: dict, store: Store) -> float | None:
    for spec in _all_steps(definition):
        for property_file in spec.get("PropertyFiles") or []:
            if property_file.get("FilePath") != "evaluation.json":
                continue
            step = next((s for s in record["Steps"] if s["StepName"] == spec["Name"]), None)
            if not step or step["StepStatus"] != StepStatus.SUCCEEDED:
                continue
            for output in step["Properties"].get("ProcessingOutputConfig", {}).get("Outputs", []):
                if output.get("OutputName") == property_file["OutputName"]:
                    report = store.read_json(f"{output['S3Output']['S3Uri'].rstrip('/')}/evaluation.json")
                    return report["multiclass_classification_metrics"]["accuracy"]["value"]
    return None


def _all_steps(definition: dict):
    for spec in definition.get("Steps", []):
        yield spec
        if spec.get("Type") == "Condition":
            yield from spec.get("Arguments", {}).get("IfSteps", [])
            yield from spec.get("Arguments", {}).get("ElseSteps", [])


def write_report(run_dir: Path, console: Console) -> None:
    """Write the run's HTML report (:func:`pipeline.local.report.write_report`) and print where it is."""
    console.print(f"report: {report.write_report(run_dir)}")


def run_demo(
    record: dict, definition: dict, store: Store, run_dir: Path, *, count: int = 10, console: Console | None = None
) -> int:
    """Run the demo for a finished execution ``record``; returns 0 on success, 1 if something is missing."""
    console = console or Console()
    accuracy = None
    try:
        accuracy = _accuracy(record, definition, store)
    except (StoreError, KeyError, TypeError) as error:
        console.print(f"demo: cannot read evaluation.json: {error}")
    status = _serve_and_predict(record, store, run_dir, count, console)
    if accuracy is not None:
        console.print(f"test accuracy (evaluation.json): {accuracy:.4f}")
    write_report(run_dir, console)
    return status


def _serve_and_predict(record: dict, store: Store, run_dir: Path, count: int, console: Console) -> int:
    register = _step(record, "RegisterModel")
    if register is None:
        console.print("demo: no model package was registered in this execution (see the quality gate above)")
        return 1
    registry = ModelRegistry(store)
    try:
        package = registry.latest(register["Properties"]["ModelPackageGroupName"], "Approved")
        model_path, digest = registry.model_data(package)
    except RegistryError as error:
        console.print(f"demo: {error}")
        return 1
    test_uri = _test_uri(record)
    images = sample_images(store.path(test_uri), count) if test_uri else []
    if not images:
        console.print("demo: no test images found in the split's 'test' output")
        return 1
    table = Table(title=f"{package['ModelPackageArn']} on the local endpoint")
    for column in ("image", "true label", "predicted", "probability", ""):
        table.add_column(column)
    correct = 0
    answers = []
    try:
        with start_in_background(model_path, sha256=digest, model_version=package["ModelPackageArn"],
                                 log_path=run_dir / "jobs" / "demo-endpoint.log") as endpoint:
            console.print(f"endpoint: {endpoint.url} serving {model_path}")
            with httpx.Client(base_url=endpoint.url, timeout=60) as client:
                for path, label in images:
                    response = client.post(
                        "/invocations",
                        content=path.read_bytes(),
                        headers={"Content-Type": "image/png", "Accept": "application/json"},
                    )
                    if response.status_code != 200:
                        table.add_row(path.name, label, f"HTTP {response.status_code}", response.text[:60], "x")
                        answers.append(
                            {
                                "image": path.name,
                                "true_label": label,
                                "predicted": None,
                                "probability": None,
                                "status": response.status_code,
                            }
                        )
                        continue
                    predicted, probability = top_prediction(response.json())
                    ok = predicted == label
                    correct += ok
                    shown = f"{probability:.3f}" if isinstance(probability, (int, float)) else "-"
                    table.add_row(path.name, label, str(predicted), shown, "ok" if ok else "x")
                    answers.append(
                        {
                            "image": path.name,
                            "true_label": label,
                            "predicted": predicted,
                            "probability": probability,
                            "status": response.status_code,
                        }
                    )
    except EndpointStartError as error:
        console.print(f"demo: {str(error).splitlines()[0]}")
        return 1
    atomic_write_json(run_dir / "endpoint.json", answers)
    console.print(table)
    console.print(f"demo images: {correct}/{len(images)} correct; endpoint {endpoint.url} stopped")
    return 0
