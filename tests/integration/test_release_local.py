"""From approval to production on this machine: real model archives, real digits, real HTTP on loopback.

One local registry and one pair of stage endpoints (staging, production) per module, driven through the CLI
(``approve``, ``reject``, ``promote``, ``teardown-local`` with ``--local``) in the order a user runs them. Two load
clients send real digits to staging through each update; every answer must be 200. The served model is the trained
test archive of tests/unit/test_serving_model.py; the "bad" one is the same archive whose ``predict_fn`` raises
(it loads and answers /ping, then fails every inference), as a broken release would.
"""

from __future__ import annotations

import base64
import io
import json
import os
import sys
import tarfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from test_serving_model import held_out, model_archive  # noqa: E402

from pipeline.cli import main  # noqa: E402
from pipeline.local.registry import ModelRegistry  # noqa: E402
from pipeline.local.stages import describe_endpoint, serving_variant  # noqa: E402

GROUP = "image-classification"
STAGING, PRODUCTION = "image-classification-staging", "image-classification"
BUCKET_PREFIX = "s3://sagemaker-image-classification/pipelines/image-classification"
# A short baking period (the canary serves 2 s beside the old model) and 3 probe requests.
OVERRIDES = ["deploy.rollout.wait_interval_s=2", "deploy.rollout.canary_requests=3",
             "deploy.rollout.canary_percent=20", "evaluation.accuracy_threshold=0.5"]


def _rebuilt(source: Path, destination: Path, extra: dict[str, bytes]) -> Path:
    """``source`` with the members of ``extra`` added or replaced: a distinct archive (another SHA-256).

    Still gzip, at level 0: zlib's level 9 (tarfile's default) takes seconds per archive and saves nothing on
    ``model.pth``'s float weights."""
    with tarfile.open(source) as tar_in, tarfile.open(destination, "w:gz", compresslevel=0) as tar_out:
        for member in tar_in.getmembers():
            if member.name in extra:
                continue
            tar_out.addfile(member, tar_in.extractfile(member) if member.isfile() else None)
        for name, data in extra.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar_out.addfile(info, io.BytesIO(data))
    return destination


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """``{"store", "images", "register"}``; stops every stage endpoint at the end."""
    root = tmp_path_factory.mktemp("release")
    store, images = root / "store", root / "test-images"
    for index, (image, label) in enumerate(held_out(60)):  # the test split: ImageFolder of held-out digits
        (images / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(images / str(label) / f"{index}.png")
    archive = model_archive() / "model.tar.gz"
    inference = (model_archive() / "model" / "code" / "inference.py").read_bytes()
    archives = {
        "v1": archive,
        "v2": _rebuilt(archive, root / "v2.tar.gz", {"RELEASE": b"2"}),
        "v3": _rebuilt(archive, root / "v3.tar.gz", {"RELEASE": b"3"}),
        "bad": _rebuilt(archive, root / "bad.tar.gz", {"code/inference.py": inference + (
            b"\n\ndef predict_fn(input_data, model):\n    raise RuntimeError('planted failure: a broken release')\n"
        )}),
    }
    registry = ModelRegistry(store)

    def register(name: str) -> str:
        url = f"s3://sagemaker-image-classification/models/{name}/model.tar.gz"
        registry.store.put_file(archives[name], url)
        return registry.create_model_package({
            "ModelPackageGroupName": GROUP, "ModelApprovalStatus": "PendingManualApproval",
            "InferenceSpecification": {"Containers": [{"Image": "pytorch-inference", "ModelDataUrl": url}],
                                       "SupportedContentTypes": ["image/png"],
                                       "SupportedResponseMIMETypes": ["application/json"]},
        })["ModelPackageArn"]  # fmt: skip

    try:
        yield {"store": store, "images": images, "register": register, "registry": registry}
    finally:
        main(["teardown-local", "--store", str(store)])


def cli(release, *args: str) -> tuple[int, dict]:
    """Run a command with ``--local --json`` and the test's overrides; returns (exit status, printed JSON)."""
    sets = [item for pair in OVERRIDES for item in ("--set", pair)]
    out = io.StringIO()
    from contextlib import redirect_stdout

    with redirect_stdout(out):
        status = main([*args[:1], "--local", "--store", str(release["store"]), "--json", *sets, *args[1:]])
    text = out.getvalue()
    return status, json.loads(text[text.index("{"):])


class Load:
    """Two clients posting real digits to ``url`` until stopped; counts every answer's status."""

    def __init__(self, url: str):
        self.url, self.statuses, self.stop_event = url, Counter(), threading.Event()
        self.bodies = []
        for image, _ in held_out(8):
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, "PNG")
            self.bodies.append(buffer.getvalue())
        self.threads = [threading.Thread(target=self._run, args=(n,)) for n in range(2)]
        self.lock = threading.Lock()

    def _run(self, n: int) -> None:
        with httpx.Client(timeout=60) as client:
            i = n
            while not self.stop_event.is_set():
                try:
                    status = client.post(f"{self.url}/invocations", content=self.bodies[i % len(self.bodies)],
                                         headers={"Content-Type": "image/png"}).status_code
                except httpx.HTTPError as error:
                    status = type(error).__name__
                with self.lock:
                    self.statuses[status] += 1
                i += 1

    def __enter__(self) -> Load:
        self.started = time.monotonic()
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_event.set()
        for thread in self.threads:
            thread.join()
        self.seconds = time.monotonic() - self.started

    @property
    def sent(self) -> int:
        return sum(self.statuses.values())

    @property
    def failed(self) -> int:
        return self.sent - self.statuses[200]


def served_version(url: str) -> str:
    response = httpx.post(f"{url}/invocations", content=base64.b64decode(_png()), headers={"Content-Type": "image/png"})
    assert response.status_code == 200, response.text
    return response.json()["model_version"]


def _png() -> str:
    buffer = io.BytesIO()
    Image.fromarray(held_out(1)[0][0]).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_approve_deploys_the_newest_pending_version_to_staging(release):
    v1 = release["register"]("v1")
    status, result = cli(release, "approve", "--reason", "accuracy checked by QA")
    assert status == 0, result
    assert result["status"] == "InService" and result["model_package_arn"] == v1
    assert served_version(result["url"]) == v1
    described = release["registry"].describe_model_package(v1)
    assert described["ModelApprovalStatus"] == "Approved"
    assert described["ApprovalDescription"] == "accuracy checked by QA"
    assert describe_endpoint(release["store"], PRODUCTION) is None  # approval never touches production


def test_reject_leaves_every_endpoint_as_it_was(release):
    before = describe_endpoint(release["store"], STAGING)
    v2 = release["register"]("v2")
    status, result = cli(release, "reject", "--reason", "worse on sevens")
    assert status == 0 and result == {"model_package_arn": v2, "status": "Rejected"}
    after = describe_endpoint(release["store"], STAGING)
    assert after["Pid"] == before["Pid"] and after["ProductionVariants"][0]["Url"] == before["ProductionVariants"][0][
        "Url"]
    assert serving_variant(after)["ModelPackageArn"] != v2
    assert describe_endpoint(release["store"], PRODUCTION) is None
    assert release["registry"].describe_model_package(v2)["ApprovalDescription"] == "worse on sevens"


def test_promote_refuses_when_staging_fails_the_smoke_test_then_deploys_to_production(release):
    sets = ["--set", "evaluation.accuracy_threshold=1.01"]
    status, result = cli(release, "promote", "--images", str(release["images"]), *sets)
    assert status == 1 and result["status"] == "SmokeTestFailed", result
    assert describe_endpoint(release["store"], PRODUCTION) is None
    status, result = cli(release, "promote", "--images", str(release["images"]))
    assert status == 0, result
    staging = serving_variant(describe_endpoint(release["store"], STAGING))["ModelPackageArn"]
    assert result["status"] == "InService" and result["model_package_arn"] == staging
    assert result["smoke_test"]["images"] == 60 and result["smoke_test"]["accuracy"] >= 0.5
    assert served_version(result["url"]) == staging
    status, again = cli(release, "promote", "--images", str(release["images"]))
    assert status == 0 and again["status"] == "Unchanged"


def test_blue_green_update_under_load_fails_no_request(release):
    v3 = release["register"]("v3")
    url = describe_endpoint(release["store"], STAGING)["Url"]
    with Load(url) as load:
        status, result = cli(release, "approve", v3.rsplit("/", 1)[1], "--reason", "retrained")
        time.sleep(0.5)
    assert status == 0 and result["status"] == "InService", result
    deployment = result["deployment"]
    print(f"\nblue/green update: {load.sent} requests sent, {load.failed} failed, {load.seconds:.1f} s under load; "
          f"deployment {deployment['Seconds']:.1f} s, canary sent {deployment['CanarySent']}")
    assert load.failed == 0, load.statuses
    assert load.sent > 0
    assert deployment["CanarySent"] == 3 and deployment["CanaryFailed"] == 0
    assert served_version(url) == v3
    assert [v["ModelPackageArn"] for v in describe_endpoint(release["store"], STAGING)["ProductionVariants"]] == [v3]


def test_a_broken_release_is_rolled_back_and_no_request_fails(release):
    bad = release["register"]("bad")
    before = serving_variant(describe_endpoint(release["store"], STAGING))
    url = describe_endpoint(release["store"], STAGING)["Url"]
    with Load(url) as load:
        status, result = cli(release, "approve", bad.rsplit("/", 1)[1], "--reason", "hotfix")
        time.sleep(0.5)
    deployment = result["deployment"]
    print(f"\nrollback: {load.sent} requests sent, {load.failed} failed, {load.seconds:.1f} s under load; "
          f"deployment {deployment['Seconds']:.1f} s, canary sent {deployment['CanarySent']}, "
          f"failed {deployment['CanaryFailed']}")
    assert status == 1 and result["status"] == "RolledBack", result
    assert "planted failure" in result["reason"]
    assert load.failed == 0, load.statuses
    after = describe_endpoint(release["store"], STAGING)
    assert after["EndpointStatus"] == "InService"
    assert [v["ModelPackageArn"] for v in after["ProductionVariants"]] == [before["ModelPackageArn"]]
    assert served_version(url) == before["ModelPackageArn"]


def test_requests_and_responses_are_captured_in_sagemakers_format(release):
    folder = release["store"] / "sagemaker-image-classification" / "pipelines" / "image-classification"
    files = sorted((folder / "data-capture" / STAGING).rglob("*.jsonl"))
    assert files, f"no capture under {folder}"
    variant, *date = files[0].relative_to(folder / "data-capture" / STAGING).parts[:5]
    assert variant.startswith("v") and [len(p) for p in date] == [4, 2, 2, 2]  # <variant>/yyyy/mm/dd/hh
    records = [json.loads(line) for f in files for line in f.read_text().splitlines()]
    record = records[0]
    assert set(record) == {"captureData", "eventMetadata", "eventVersion"} and record["eventVersion"] == "0"
    request, response = record["captureData"]["endpointInput"], record["captureData"]["endpointOutput"]
    assert request["mode"] == "INPUT" and request["encoding"] == "BASE64" and request["observedContentType"] == (
        "image/png")
    assert Image.open(io.BytesIO(base64.b64decode(request["data"]))).size == (28, 28)
    assert response["mode"] == "OUTPUT" and response["encoding"] == "JSON"
    assert "predictions" in json.loads(response["data"])
    assert record["eventMetadata"]["eventId"] and record["eventMetadata"]["inferenceTime"].endswith("Z")


def test_teardown_stops_what_was_started(release):
    pids = [describe_endpoint(release["store"], name)["Pid"] for name in (STAGING, PRODUCTION)]
    urls = [v["Url"] for name in (STAGING, PRODUCTION)
            for v in describe_endpoint(release["store"], name)["ProductionVariants"]]
    assert main(["teardown-local", "--store", str(release["store"])]) == 0
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    for url in urls:
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"{url}/ping", timeout=2)
    assert describe_endpoint(release["store"], STAGING) is None
