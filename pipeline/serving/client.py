"""Send images to an endpoint and print the top-k labels: a local endpoint over HTTP, or a SageMaker endpoint with
boto3 ``sagemaker-runtime`` ``invoke_endpoint``.

One request per image, with the image's own bytes and Content-Type (by suffix; ``application/x-image`` for other
formats), so each request stays under the 6 MB payload limit. top_k travels as the ``top_k`` query parameter
locally and as CustomAttributes ``top_k=N`` to SageMaker (docs/serving.md).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

#: Request Content-Type by file suffix (lower case); anything else is sent as application/x-image.
CONTENT_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp",
                 ".npy": "application/x-npy", ".json": "application/json"}


class PredictError(RuntimeError):
    """The endpoint cannot be reached or called; the message says what to fix."""


def content_type_for(path: Path) -> str:
    """The Content-Type for an image file, from its suffix in any case."""
    return CONTENT_TYPES.get(Path(path).suffix.lower(), "application/x-image")


@dataclass
class Prediction:
    """The answer for one image: top-k ``[{"label", "probability"}]`` or an error message with its status."""

    image: str
    labels: list[dict] | None = None
    status: int = 200
    error: str | None = None
    model_version: str | None = None


def invocations_url(endpoint: str) -> str:
    """``http://host:port`` or ``http://host:port/invocations`` -> the invocations URL.

    Raises:
        PredictError: not an http(s) URL.
    """
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PredictError(f"endpoint {endpoint!r} is not an http(s) URL: e.g. http://127.0.0.1:8080 (a local "
                           "endpoint); use --endpoint-name for a SageMaker endpoint")
    return endpoint if parts.path.rstrip("/").endswith("/invocations") else endpoint.rstrip("/") + "/invocations"


def _parse(image: str, status: int, body: bytes) -> list[Prediction]:
    """One Prediction per image in the answer (a JSON request may hold several: ``name[0]``, ``name[1]``...)."""
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return [Prediction(image, status=status, error=body[:300].decode("utf-8", "replace") or f"HTTP {status}")]
    if status != 200 or not isinstance(payload, dict) or not isinstance(payload.get("predictions"), list):
        message = payload.get("error") if isinstance(payload, dict) else None
        return [Prediction(image, status=status, error=message or json.dumps(payload)[:300])]
    rows = payload["predictions"]
    version = payload.get("model_version")
    if len(rows) == 1:
        return [Prediction(image, rows[0], status, model_version=version)]
    return [Prediction(f"{image}[{index}]", labels, status, model_version=version) for index, labels in enumerate(rows)]


def _read(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise PredictError(f"cannot read image {path}: {error.strerror or error}") from error


def predict_http(endpoint: str, images: list[Path], top_k: int = 5, timeout_s: float = 60.0) -> list[Prediction]:
    """POST each image to a local endpoint. Status errors (4xx/5xx) come back per image.

    Raises:
        PredictError: bad URL, unreadable file, or the endpoint cannot be reached.
    """
    import httpx

    url = invocations_url(endpoint)
    results = []
    with httpx.Client(timeout=timeout_s) as client:
        for path in images:
            try:
                response = client.post(url, params={"top_k": top_k}, content=_read(path),
                                       headers={"Content-Type": content_type_for(path), "Accept": "application/json"})
            except httpx.HTTPError as error:
                raise PredictError(f"cannot reach {url} ({type(error).__name__}: {error}): is the endpoint running? "
                                   "start one with: python -m pipeline serve --model MODEL") from error
            results.extend(_parse(str(path), response.status_code, response.content))
    return results


def predict_sagemaker(endpoint_name: str, images: list[Path], top_k: int = 5,
                      region: str | None = None) -> list[Prediction]:
    """Invoke a SageMaker endpoint (``sagemaker-runtime`` ``invoke_endpoint``) once per image.

    The container's 4xx answers (botocore ``ModelError``) come back per image.

    Raises:
        PredictError: no credentials, no region, unknown endpoint, access denied, unreachable service; each with
            the fix.
    """
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError

    try:
        # A fresh Session resolves credentials now, not from boto3's cached default session; standard retries.
        runtime = boto3.Session().client("sagemaker-runtime", region_name=region,
                                         config=Config(retries={"mode": "standard", "total_max_attempts": 5}))
    except NoRegionError as error:
        raise PredictError("no AWS region is configured: pass --region (e.g. us-east-1) or set AWS_DEFAULT_REGION"
                           ) from error
    results = []
    for path in images:
        try:
            response = runtime.invoke_endpoint(EndpointName=endpoint_name, ContentType=content_type_for(path),
                                               Accept="application/json", Body=_read(path),
                                               CustomAttributes=f"top_k={top_k}")
            results.extend(_parse(str(path), 200, response["Body"].read()))
        except NoCredentialsError as error:
            raise PredictError("no AWS credentials found: run `aws configure` (or `aws sso login` and set "
                               "AWS_PROFILE), or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY") from error
        except ClientError as error:
            info = error.response.get("Error", {})
            code, message = info.get("Code", ""), info.get("Message", str(error))
            if code == "ModelError":  # the container answered with an error status: per image
                status = int(error.response.get("OriginalStatusCode") or 400)
                original = error.response.get("OriginalMessage") or message
                results.extend(_parse(str(path), status, original.encode("utf-8")))
                continue
            if code in ("AccessDeniedException", "AccessDenied", "UnrecognizedClientException",
                        "InvalidSignatureException", "ExpiredTokenException"):
                raise PredictError(f"AWS refused the call ({code}: {message}): check the credentials and that they "
                                   f"allow sagemaker:InvokeEndpoint on {endpoint_name}") from error
            if code == "ValidationError":
                raise PredictError(f"{message}: check --endpoint-name and --region (list endpoints with "
                                   "`aws sagemaker list-endpoints`)") from error
            raise PredictError(f"invoke_endpoint failed ({code}): {message}") from error
        except BotoCoreError as error:
            raise PredictError(f"cannot call SageMaker ({type(error).__name__}: {error}): check the network and "
                               f"region {runtime.meta.region_name}") from error
    return results


def print_predictions(predictions: list[Prediction], console=None) -> None:
    """Print one table: image, rank, label, probability (errors in red with their status)."""
    from rich.table import Table

    from pipeline.cli import make_console

    console = console or make_console()
    table = Table(title="predictions")
    for column in ("image", "#", "label", "probability"):
        table.add_column(column, justify="right" if column in ("#", "probability") else "left")
    for prediction in predictions:
        name = os.path.basename(prediction.image)
        if prediction.error is not None:
            table.add_row(name, "", f"[red]error {prediction.status}[/red]", f"[red]{prediction.error}[/red]")
            continue
        for rank, item in enumerate(prediction.labels or [], start=1):
            table.add_row(name if rank == 1 else "", str(rank), str(item["label"]), f"{item['probability']:.4f}")
        table.add_section()
    versions = {p.model_version for p in predictions if p.model_version}
    if versions:
        table.caption = f"model version {', '.join(sorted(versions))}"
    console.print(table)
