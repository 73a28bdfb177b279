"""A local SageMaker endpoint with production variants: one long-lived process per stage endpoint.

``python -m pipeline.local.router --endpoint-name NAME --state PATH --port P [--capture-uri S3URI ...]`` listens on
127.0.0.1 and plays the SageMaker endpoint in front of its model servers (``pipeline.serving.server``, one child
process per variant, started with this process as their parent so they end with it):

- ``GET /ping``: 200 while a variant is InService. ``POST /invocations``: forwarded to a variant chosen by the
  traffic weights, or to the one named in ``X-Amzn-SageMaker-Target-Variant`` (InvokeEndpoint's TargetVariant); the
  answer carries ``X-Amzn-Invoked-Production-Variant`` (InvokeEndpoint's InvokedProductionVariant).
- ``GET /describe``: DescribeEndpoint's shape (EndpointStatus, ProductionVariants with their weights and model
  packages, FailureReason) plus ``LastDeployment`` (outcome, requests the canary answered and failed, seconds).
- ``POST /update``: a blue/green update to a new model, as SageMaker's ``DeploymentConfig.BlueGreenUpdatePolicy``
  with ``TrafficRoutingConfiguration`` ``CANARY`` does it (https://docs.aws.amazon.com/sagemaker/latest/dg/
  deployment-guardrails-blue-green-canary.html): the new ("green") fleet starts beside the old ("blue") one, must
  answer ``/ping``, then takes ``canary_percent`` of the traffic for ``wait_interval_s`` (the baking period) while
  it answers ``canary_requests`` probes; only then does all traffic shift to it and the old fleet stop. A failed
  start, a failed probe or a failed canary request rolls the update back: the new fleet stops and the old keeps
  serving (AWS: auto-rollback on the deploy's CloudWatch alarms). 409 while an update runs, as UpdateEndpoint
  answers for an endpoint that is not InService.

One deliberate difference: a live request that the canary fails is answered again by the old fleet, so clients
see no error during a rolled-back update. In AWS the canary's failed requests reach clients until the alarm fires;
the local endpoint counts each of them in ``LastDeployment.CanaryFailed`` instead of hiding it.

Data capture (``--capture-uri``, ``--capture-percent``): each sampled request and response is appended as one JSON
Lines record in SageMaker's capture format (https://docs.aws.amazon.com/sagemaker/latest/dg/
model-monitor-data-capture-endpoint.html) to ``<capture-uri>/<endpoint>/<variant>/yyyy/mm/dd/hh/<file>.jsonl``
in the local store, the path SageMaker writes in S3.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import json
import os
import random
import signal
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

from pipeline.local.store import Store, atomic_write_json
from pipeline.serving.server import EndpointStartError, start_in_background

TARGET_VARIANT_HEADER = "X-Amzn-SageMaker-Target-Variant"
INVOKED_VARIANT_HEADER = "X-Amzn-Invoked-Production-Variant"
#: Headers passed on to the model server (the rest are hop-by-hop or the router's own).
FORWARDED_HEADERS = ("content-type", "accept", "x-amzn-sagemaker-custom-attributes", "x-top-k")
#: Content types captured as text (``encoding: JSON``); anything else is captured base64 (DataCaptureConfig's
#: CaptureContentTypeHeader.JsonContentTypes, which the AWS deploy sets to the same list).
JSON_CONTENT_TYPES = ("application/json",)
MODEL_START_TIMEOUT_S = 300.0


class Variant:
    """One production variant: a model server process and its share of the traffic."""

    def __init__(self, name: str, model: dict, handle, weight: float):
        self.name, self.model, self.handle, self.weight = name, model, handle, weight
        self.in_flight = 0
        self.answered = 0
        self.failed = 0

    def describe(self) -> dict:
        return {"VariantName": self.name, "CurrentWeight": self.weight, "ModelPackageArn": self.model.get("arn"),
                "ModelDataUrl": self.model.get("url"), "ModelDataSha256": self.model.get("sha256"),
                "Url": self.handle.url, "Invocations": self.answered, "Errors": self.failed,
                "Status": "InService" if self.handle.running() else "Failed"}  # fmt: skip


class Endpoint:
    """The variants of one endpoint, their weights and its deployments; thread-safe."""

    def __init__(self, name: str, state_path: Path, url: str, capture: dict | None):
        self.name, self.state_path, self.url, self.capture = name, state_path, url, capture
        self.lock = threading.Lock()
        self.variants: list[Variant] = []
        self.status = "Creating"
        self.failure_reason: str | None = None
        self.last_deployment: dict | None = None
        self.http = httpx.Client(timeout=60.0, limits=httpx.Limits(max_connections=64))
        self.capture_file_id = uuid.uuid4().hex[:12]
        self.capture_lock = threading.Lock()
        self.write_state()

    # -- state -----------------------------------------------------------------------------------------------------
    def describe(self) -> dict:
        with self.lock:
            return {"EndpointName": self.name, "EndpointStatus": self.status, "FailureReason": self.failure_reason,
                    "Url": self.url, "Pid": os.getpid(),
                    "ProductionVariants": [v.describe() for v in self.variants],
                    "LastDeployment": self.last_deployment,
                    "DataCaptureConfig": self.capture}  # fmt: skip

    def write_state(self) -> None:
        atomic_write_json(self.state_path, self.describe())

    def _set(self, **fields) -> None:
        with self.lock:
            for key, value in fields.items():
                setattr(self, key, value)
        self.write_state()

    # -- traffic ---------------------------------------------------------------------------------------------------
    def _pick(self, target: str | None) -> tuple[Variant | None, Variant | None]:
        """``(variant to try, fallback if it is a canary that fails)``, with in-flight counts taken."""
        with self.lock:
            live = [v for v in self.variants if v.weight > 0]
            if target:
                chosen = next((v for v in self.variants if v.name == target), None)
            elif not live:
                chosen = None
            else:
                chosen = random.choices(live, weights=[v.weight for v in live])[0]
            primary = max(live, key=lambda v: v.weight) if live else None
            fallback = primary if chosen is not None and primary is not chosen and not target else None
            for variant in (chosen, fallback):
                if variant is not None:
                    variant.in_flight += 1
            return chosen, fallback

    def _release(self, *variants: Variant | None) -> None:
        with self.lock:
            for variant in variants:
                if variant is not None:
                    variant.in_flight -= 1

    def _forward(self, variant: Variant, body: bytes, headers: dict) -> httpx.Response | None:
        try:
            response = self.http.post(f"{variant.handle.url}/invocations", content=body, headers=headers)
        except httpx.HTTPError:
            response = None
        with self.lock:
            if response is None or response.status_code >= 500:
                variant.failed += 1
            else:
                variant.answered += 1
        return response

    def invoke(self, body: bytes, headers: dict, target: str | None) -> tuple[int, bytes, dict]:
        chosen, fallback = self._pick(target)
        try:
            if chosen is None:
                message = f"variant {target!r} not found" if target else "no variant is serving"
                return 400 if target else 503, json.dumps({"error": message}).encode(), {}
            served_by = chosen
            response = self._forward(chosen, body, headers)
            if (response is None or response.status_code >= 500) and fallback is not None:
                self._canary_failed(chosen, response)
                served_by, response = fallback, self._forward(fallback, body, headers)
            if response is None:
                return 503, json.dumps({"error": f"variant {served_by.name} did not answer"}).encode(), {}
            out_headers = {"Content-Type": response.headers.get("content-type", "application/json"),
                           INVOKED_VARIANT_HEADER: served_by.name}  # fmt: skip
            if response.status_code < 400:
                self._capture(served_by, body, headers.get("content-type"), response)
            return response.status_code, response.content, out_headers
        finally:
            self._release(chosen, fallback)

    def _canary_failed(self, variant: Variant, response: httpx.Response | None) -> None:
        with self.lock:
            deployment = self.last_deployment
            if deployment and deployment.get("NewVariant") == variant.name and deployment["Status"] == "Canary":
                deployment["CanaryFailed"] += 1
                deployment.setdefault("FirstCanaryError", (response.text[:300] if response is not None
                                                           else "no answer (connection error)"))

    # -- data capture ----------------------------------------------------------------------------------------------
    def _capture(self, variant: Variant, body: bytes, content_type: str | None, response: httpx.Response) -> None:
        if not self.capture or random.uniform(0, 100) >= self.capture["SamplingPercentage"]:
            return
        now = dt.datetime.now(dt.UTC)
        out_type = response.headers.get("content-type", "")

        def part(data: bytes, observed: str | None, mode: str) -> dict:
            if (observed or "").split(";")[0].strip().lower() in JSON_CONTENT_TYPES:
                return {"observedContentType": observed, "mode": mode, "data": data.decode("utf-8", "replace"),
                        "encoding": "JSON"}
            return {"observedContentType": observed or "", "mode": mode, "data": base64.b64encode(data).decode(),
                    "encoding": "BASE64"}

        record = {
            "captureData": {"endpointInput": part(body, content_type, "INPUT"),
                            "endpointOutput": part(response.content, out_type, "OUTPUT")},
            "eventMetadata": {"eventId": str(uuid.uuid4()), "inferenceTime": now.strftime("%Y-%m-%dT%H:%M:%SZ")},
            "eventVersion": "0",
        }  # fmt: skip
        uri = (f"{self.capture['DestinationS3Uri'].rstrip('/')}/{self.name}/{variant.name}/"
               f"{now:%Y/%m/%d/%H}/{now:%M}-{self.capture_file_id}.jsonl")
        path = Store(self.capture["StoreRoot"]).path(uri)
        with self.capture_lock:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")

    # -- deployments -----------------------------------------------------------------------------------------------
    def begin_update(self, request: dict) -> str | None:
        """Start a deployment in the background; returns why it cannot start (an update already runs), else None."""
        with self.lock:
            if self.last_deployment and self.last_deployment["Status"] in ("Starting", "Canary", "Shifting"):
                return f"endpoint {self.name} is {self.status}: an update is already in progress"
            self.last_deployment = {"Status": "Starting", "NewVariant": None, "CanarySent": 0, "CanaryFailed": 0,
                                    "StartTime": time.time(), "EndTime": None, "Outcome": None, "Reason": None,
                                    "ModelPackageArn": request["model"].get("arn")}  # fmt: skip
            self.status = "Updating" if self.variants else "Creating"
        self.write_state()
        threading.Thread(target=self._deploy, args=(request,), daemon=True).start()
        return None

    def _finish(self, outcome: str, reason: str | None, status: str) -> None:
        with self.lock:
            self.last_deployment.update(Status=outcome, Outcome=outcome, Reason=reason, EndTime=time.time())
            self.last_deployment["Seconds"] = round(self.last_deployment["EndTime"]
                                                    - self.last_deployment["StartTime"], 3)
            self.status = status
            self.failure_reason = reason if outcome != "Succeeded" else None
        self.write_state()

    def _drain_and_stop(self, variant: Variant, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while variant.in_flight > 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        variant.handle.stop()
        with self.lock:
            if variant in self.variants:
                self.variants.remove(variant)

    def _deploy(self, request: dict) -> None:
        model, rollout = request["model"], request["rollout"]
        with self.lock:
            old = list(self.variants)
            name = request.get("variant_name") or "AllTraffic"
            if any(v.name == name for v in old):  # the same model again (e.g. after a rollback): a distinct name
                name = f"{name}-{uuid.uuid4().hex[:4]}"
            self.last_deployment["NewVariant"] = name
        log_path = self.state_path.with_name(f"{self.name}-{name}.log")
        try:
            handle = start_in_background(model["path"], sha256=model.get("sha256"), model_version=model.get("arn"),
                                         num_threads=request.get("num_threads", 1), log_path=log_path,
                                         startup_timeout_s=MODEL_START_TIMEOUT_S)  # fmt: skip
        except EndpointStartError as error:
            reason = f"the new model did not answer /ping: {str(error).splitlines()[0]}"
            self._finish("RolledBack" if old else "Failed", reason, "InService" if old else "Failed")
            return
        new = Variant(name, model, handle, 0.0)
        with self.lock:
            self.variants.append(new)
            if old:  # the canary share of the traffic goes to the new fleet
                total = sum(v.weight for v in old) or 1.0
                new.weight = total * rollout["canary_percent"] / (100 - rollout["canary_percent"])
            self.last_deployment["Status"] = "Canary"
        self.write_state()
        error = self._bake(new, request.get("probes") or [], rollout)
        if error is None and old:
            with self.lock:
                error = (f"{self.last_deployment['CanaryFailed']} canary request(s) failed: "
                         f"{self.last_deployment.get('FirstCanaryError')}"
                         if self.last_deployment["CanaryFailed"] else None)  # fmt: skip
        if error is not None:
            with self.lock:
                new.weight = 0.0
            self._drain_and_stop(new)
            self._finish("RolledBack" if old else "Failed", error, "InService" if old else "Failed")
            return
        with self.lock:
            self.last_deployment["Status"] = "Shifting"
            new.weight = 1.0
            for variant in old:
                variant.weight = 0.0
        self.write_state()
        time.sleep(rollout.get("termination_wait_s", 0))
        for variant in old:
            self._drain_and_stop(variant)
        self._finish("Succeeded", None, "InService")

    def _bake(self, new: Variant, probes: list, rollout: dict) -> str | None:
        """Send the probes to the new variant over the baking period; the first failure's message, else None."""
        deadline = time.monotonic() + rollout["wait_interval_s"]
        needed = max(rollout["canary_requests"], 1)
        for index in range(needed):
            if probes:
                data, content_type = probes[index % len(probes)]
                body, headers = base64.b64decode(data), {"content-type": content_type, "accept": "application/json"}
            else:  # nothing to send: /ping is the only check there is
                body, headers = None, {}
            try:
                if body is None:
                    response = self.http.get(f"{new.handle.url}/ping")
                else:
                    response = self.http.post(f"{new.handle.url}/invocations", content=body, headers=headers)
            except httpx.HTTPError as error:
                return f"canary request {index + 1} to {new.name} failed: {error}"
            with self.lock:
                self.last_deployment["CanarySent"] += 1
                if response.status_code >= 400:
                    self.last_deployment["CanaryFailed"] += 1
            if response.status_code >= 400:
                return (f"canary request {index + 1} to {new.name} answered {response.status_code}: "
                        f"{response.text[:300]}")
            with self.lock:
                if self.last_deployment["CanaryFailed"]:
                    return None  # a live canary request failed: the caller rolls back with its message
            time.sleep(max(0.0, (deadline - time.monotonic()) / max(1, needed - index)))
        while time.monotonic() < deadline:
            time.sleep(0.05)
        return None

    def stop(self) -> None:
        with self.lock:
            variants = list(self.variants)
            self.status = "Deleting"
        for variant in variants:
            variant.handle.stop()
        with contextlib.suppress(OSError):
            self.state_path.unlink()


def make_handler(endpoint: Endpoint):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # one line per request would bury the deploy's own lines
            pass

        def _send(self, status: int, body: bytes, headers: dict | None = None) -> None:
            self.send_response(status)
            headers = {"Content-Type": "application/json", **(headers or {})}
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def do_GET(self):
            if self.path == "/ping":
                serving = any(v["CurrentWeight"] > 0 and v["Status"] == "InService"
                              for v in endpoint.describe()["ProductionVariants"])
                self._send(200 if serving else 503, b"{}")
            elif self.path == "/describe":
                self._send(200, json.dumps(endpoint.describe()).encode())
            else:
                self._send(404, b'{"error": "not found"}')

        def do_POST(self):
            body = self._body()
            if self.path.split("?")[0] == "/invocations":
                headers = {k: v for k, v in self.headers.items() if k.lower() in FORWARDED_HEADERS}
                headers = {k.lower(): v for k, v in headers.items()}
                path_query = self.path.partition("?")[2]
                if path_query:
                    headers["x-top-k"] = dict(p.partition("=")[::2] for p in path_query.split("&")).get(
                        "top_k", headers.get("x-top-k", ""))
                status, content, out = endpoint.invoke(body, headers, self.headers.get(TARGET_VARIANT_HEADER))
                self._send(status, content, out)
            elif self.path == "/update":
                refused = endpoint.begin_update(json.loads(body))
                self._send(409 if refused else 202, json.dumps({"error": refused} if refused else {}).encode())
            else:
                self._send(404, b'{"error": "not found"}')

    return Handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint-name", required=True)
    parser.add_argument("--state", type=Path, required=True, help="JSON file this endpoint keeps its state in")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--store", type=Path, help="local store root (data capture)")
    parser.add_argument("--capture-uri", help="DataCaptureConfig.DestinationS3Uri; none: no capture")
    parser.add_argument("--capture-percent", type=float, default=100.0)
    args = parser.parse_args(argv)
    capture = None
    if args.capture_uri:
        capture = {"DestinationS3Uri": args.capture_uri, "SamplingPercentage": args.capture_percent,
                   "StoreRoot": str(args.store)}  # fmt: skip
    url = f"http://127.0.0.1:{args.port}"
    server = ThreadingHTTPServer(("127.0.0.1", args.port), None)
    endpoint = Endpoint(args.endpoint_name, args.state, url, capture)
    server.RequestHandlerClass = make_handler(endpoint)
    server.daemon_threads = True

    def shutdown(*_):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        endpoint.stop()
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
