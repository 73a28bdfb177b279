"""What the report reads: ``execution.json``, ``definition.json``, the processing steps' JSON outputs and the train
job's ``output.tar.gz``, found through the steps' recorded ``Properties`` (S3 URIs mapped into the local store).

Nothing here formats or draws; a missing piece raises :class:`Unavailable` with the reason the page shows.
"""

from __future__ import annotations

import json
import tarfile
import urllib.request
from pathlib import Path
from typing import Any

from pipeline.local.store import Store, StoreError

#: The endpoint's answers that ``run-local --demo`` writes beside execution.json.
ENDPOINT_ANSWERS_FILE = "endpoint.json"


class Unavailable(Exception):
    """A section's data is missing; the message says why (shown as "not available: <why>")."""


class RunData:
    """Reads what the sections need from execution.json, the store and the train job's output.tar.gz."""

    def __init__(self, run_dir: Path, record: dict, store_root: Path | None):
        self.run_dir = run_dir
        self.record = record
        self.steps = record.get("Steps", [])
        root = store_root or (Path(record["Store"]) if record.get("Store") else None)
        self.store = Store(root) if root and Path(root).is_dir() else None
        self._output_members: dict[str, bytes] | None = None

    def steps_of(self, kind: str) -> list[dict]:
        return [s for s in self.steps if s.get("StepType") == kind]

    def local(self, uri: str) -> Path:
        if self.store is None:
            raise Unavailable("the local store is not known (no Store in execution.json and no store_root given)")
        try:
            return self.store.path(uri)
        except StoreError as error:
            raise Unavailable(str(error)) from error

    def processing_file(self, file_name: str, step_name: str | None = None) -> Any:
        """The JSON ``file_name`` found in any succeeded processing step's outputs (e.g. debug.json), or only in
        ``step_name``'s."""
        searched = []
        for step in self.steps_of("Processing"):
            if step_name is not None and step["StepName"] != step_name:
                continue
            for output in step.get("Properties", {}).get("ProcessingOutputConfig", {}).get("Outputs", []):
                uri = output.get("S3Output", {}).get("S3Uri")
                if not uri:
                    continue
                path = self.local(uri.rstrip("/") + "/" + file_name)
                searched.append(step["StepName"])
                if path.is_file():
                    return json.loads(path.read_text(encoding="utf-8"))
        where = f"the outputs of {', '.join(sorted(set(searched)))}" if searched else "any finished processing step"
        raise Unavailable(f"no {file_name} in {where}")

    def training_output(self) -> dict[str, bytes]:
        """Members of the train job's output.tar.gz (history.json, profiler/*.jsonl) by normalized name.

        Only ``.json``/``.jsonl`` members are read, into memory (``extractfile``): nothing is written to disk, so a
        hostile member name or link cannot land anywhere (docs/security.md)."""
        if self._output_members is not None:
            return self._output_members
        training = [s for s in self.steps_of("Training") if s.get("Properties")]
        if not training:
            raise Unavailable("no training step with properties in this execution")
        properties = training[-1]["Properties"]
        model_uri = properties.get("ModelArtifacts", {}).get("S3ModelArtifacts", "")
        candidates = []
        if model_uri.endswith("model.tar.gz"):
            candidates.append(model_uri[: -len("model.tar.gz")] + "output.tar.gz")
        output_path = properties.get("OutputDataConfig", {}).get("S3OutputPath")
        if output_path and properties.get("TrainingJobName"):
            candidates.append(f"{output_path.rstrip('/')}/{properties['TrainingJobName']}/output/output.tar.gz")
        for uri in candidates:
            path = self.local(uri)
            if path.is_file():
                members = {}
                with tarfile.open(path, "r:*") as archive:
                    for member in archive.getmembers():
                        if member.isfile() and (member.name.endswith((".json", ".jsonl"))):
                            handle = archive.extractfile(member)
                            if handle is not None:
                                members[member.name.removeprefix("./")] = handle.read()
                self._output_members = members
                return members
        looked = ", ".join(candidates) or "-"
        raise Unavailable(f"the train job's output.tar.gz is not in the store (looked for {looked})")

    def output_json(self, name: str) -> Any:
        members = self.training_output()
        if name not in members:
            raise Unavailable(f"{name} is not in the train job's output.tar.gz")
        return json.loads(members[name])

    def output_jsonl(self, name: str) -> list[dict]:
        members = self.training_output()
        if name not in members:
            raise Unavailable(f"{name} is not in the train job's output.tar.gz")
        rows = []
        for line in members[name].decode("utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return rows

    def definition(self) -> dict:
        """The definition JSON the execution ran (``<run_dir>/definition.json``), else {}."""
        path = self.run_dir / "definition.json"
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return {}

    def endpoint_answers(self) -> list[dict]:
        """``runs/<id>/endpoint.json``: ``[{"image", "true_label", "predicted", "probability", "status"}]``."""
        path = self.run_dir / ENDPOINT_ANSWERS_FILE
        if not path.is_file():
            raise Unavailable(f"{ENDPOINT_ANSWERS_FILE} is not in {self.run_dir} "
                              "(written by run-local --demo after it queries the endpoint)")  # fmt: skip
        return json.loads(path.read_text(encoding="utf-8"))


def expression_context(data: RunData):
    """An expressions.Context over the recorded execution: parameters, step properties, property files."""
    from pipeline.local import expressions

    steps = {s["StepName"]: s for s in data.steps}
    definition = {s.get("Name"): s for s in all_steps(data.definition().get("Steps", []))}

    def step_properties(name: str) -> dict:
        if name not in steps or not steps[name].get("Properties"):
            raise expressions.ExpressionError(f"step {name} has no recorded properties")
        return steps[name]["Properties"]

    def property_file(step_name: str, file_name: str) -> Any:
        spec = next((p for p in definition.get(step_name, {}).get("PropertyFiles") or []
                     if p["PropertyFileName"] == file_name), None)  # fmt: skip
        if spec is None:
            raise expressions.ExpressionError(f"step {step_name} declares no PropertyFile {file_name!r}")
        outputs = step_properties(step_name).get("ProcessingOutputConfig", {}).get("Outputs", [])
        output = next(o for o in outputs if o.get("OutputName") == spec["OutputName"])
        return json.loads(data.local(f"{output['S3Output']['S3Uri'].rstrip('/')}/{spec['FilePath']}").read_text())

    return expressions.Context(parameters=data.record.get("Parameters") or {}, step_properties=step_properties,
                               property_file=property_file, read_json=lambda uri: json.loads(
                                   data.local(uri).read_text()))  # fmt: skip


def all_steps(steps: list[dict]) -> list[dict]:
    """Every step of a definition, the ones inside a ConditionStep's branches included."""
    found = []
    for step in steps:
        found.append(step)
        arguments = step.get("Arguments", {}) if step.get("Type") == "Condition" else {}
        found.extend(all_steps(arguments.get("IfSteps", []) + arguments.get("ElseSteps", [])))
    return found


def endpoint_now(url: str, serve_command: str | None) -> str:
    """The local endpoint's state when the report is written: GET /ping on loopback (1 s), as SageMaker's health
    check does; a local endpoint stops when its deploy step ends, so this usually says it is stopped."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/ping", timeout=1.0) as response:  # noqa: S310 (loopback)
            if response.status == 200:
                return f"InService: {url} answers /ping"
    except OSError:
        pass
    again = f"; serve it again with: {serve_command}" if serve_command else ""
    return f"stopped: {url} does not answer /ping (a local endpoint stops with its step){again}"
