"""``serve``, ``predict``, ``load``: the local endpoint, a client for it (or a SageMaker endpoint), a load test.

See docs/serving.md for the request and response contract.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from pipeline.errors import UserError
from pipeline.local.registry import RegistryError, resolve_model_package
from pipeline.serving.settings import add_endpoint_arguments, config_from_args


def register(subparsers) -> None:
    serve = subparsers.add_parser(
        "serve", help="serve a model archive on SageMaker's endpoint contract (/ping, /invocations)",
        description="Serve a model archive through its own code/inference.py, as the AWS PyTorch inference "
                    "container does: GET /ping, POST /invocations, GET /execution-parameters. Stops on Ctrl-C.")
    serve.add_argument("--model", required=True, metavar="PATH_OR_PACKAGE",
                       help="model.tar.gz, an extracted model folder, or a registered model package: 'latest' "
                            "(newest Approved), '<group>/<version>' or its ARN (read from --store)")
    serve.add_argument("--sha256", help="hex SHA-256 the archive must have (a package's is checked for you)")
    serve.add_argument("--store", type=Path, default=Path(".store"), help="local store of the registry "
                                                                         "(default .store)")
    serve.add_argument("--model-version", help="version echoed in responses (default: the package's ARN)")
    serve.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=None,
                       help="port (default: $SAGEMAKER_BIND_TO_PORT, else 8080)")
    add_endpoint_arguments(serve)
    serve.set_defaults(func=run_serve)

    predict = subparsers.add_parser(
        "predict", help="send images to an endpoint and print the top-k labels",
        description="Send each image (JPEG, PNG, WebP, other PIL formats, .npy) to a local endpoint (--endpoint) or "
                    "a SageMaker endpoint (--endpoint-name, boto3 sagemaker-runtime invoke_endpoint).")
    predict.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    target = predict.add_mutually_exclusive_group(required=True)
    target.add_argument("--endpoint", metavar="URL", help="a local endpoint, e.g. http://127.0.0.1:8080")
    target.add_argument("--endpoint-name", metavar="NAME", help="a SageMaker endpoint's name")
    predict.add_argument("--region", help="AWS region of --endpoint-name (default: region in --config)")
    predict.add_argument("--config", type=Path, default=None,
                         help="pipeline config whose region --endpoint-name uses (default: pipeline.yaml)")
    predict.add_argument("--top-k", type=int, default=5, help="labels per image (default 5)")
    predict.add_argument("--json", action="store_true", help="print JSON instead of a table")
    predict.set_defaults(func=run_predict)

    load = subparsers.add_parser(
        "load", help="load-test an endpoint (bounded in requests and time)",
        description="Send --requests images from --images with --concurrency clients to one endpoint URL, for at "
                    "most --duration-limit seconds; report requests/s, p50/p95/p99 latency and status counts.")
    load.add_argument("--endpoint", required=True, metavar="URL", help="e.g. http://127.0.0.1:8080")
    load.add_argument("--images", required=True, type=Path, metavar="DIR", help="folder of images (any depth)")
    load.add_argument("--concurrency", type=int, default=8, help="clients at once (default 8, at most 256)")
    load.add_argument("--requests", type=int, default=2000, help="total requests (default 2000)")
    load.add_argument("--duration-limit", type=float, default=60.0, help="seconds at most (default 60)")
    load.add_argument("--top-k", type=int, default=None, help="top_k of each request (default: the server's, 5)")
    load.add_argument("--json", action="store_true", help="print the report as JSON")
    load.set_defaults(func=run_load)


def resolve_model(reference: str, store: Path, sha256: str | None) -> tuple[str, str | None, str | None]:
    """``(archive or folder path, expected SHA-256, model version)`` for ``--model``.

    An existing path is used as is. Otherwise ``reference`` names a registered model package (``latest``,
    ``<group>/<version>`` or an ARN) in the local registry under ``store``, whose archive path and SHA-256 the
    registry supplies; its version is the package ARN.

    Raises:
        UserError: no such path and no such package.
    """
    path = Path(reference).expanduser()
    if path.exists():
        return str(path), sha256, None
    try:
        package = resolve_model_package(store, reference)
    except (RegistryError, OSError) as error:
        raise UserError(f"--model {reference}: not a file or folder, nor a registered model package ({error})"
                        ) from error
    if sha256 and sha256.lower() != package["sha256"].lower():
        raise UserError(f"--sha256 {sha256} differs from the registered SHA-256 {package['sha256']} of {reference}")
    return str(package["model_path"]), package["sha256"], package["description"].get("ModelPackageArn")


def _check_archive(model: str, sha256: str | None) -> None:
    """Open and check the archive (gzip tar, checksum, safe members) as the endpoint will, before anything is
    announced or started: a wrong --model is one error line, not a server that starts and then stops.

    Raises:
        UserError: the archive cannot be used (the message says why).
    """
    import tempfile

    from pipeline.serving.handlers import ModelArchiveError, prepare_model_dir

    with tempfile.TemporaryDirectory(prefix="serve-check-") as scratch:
        try:
            prepare_model_dir(model, Path(scratch), sha256)
        except (ModelArchiveError, OSError) as error:
            raise UserError(f"--model {model}: {error}") from error


def run_serve(args) -> int:
    """Run the endpoint in the foreground until Ctrl-C / SIGTERM."""
    from pipeline.serving.server import ModelLoadError, resolve_port, serve

    model, sha256, version = resolve_model(args.model, args.store, args.sha256)
    _check_archive(model, sha256)
    config = config_from_args(args, model, sha256, args.model_version or version)
    port = resolve_port(args.port)
    try:
        serve(config, args.host, port, on_loaded=lambda: print(
            f"serving {model} on http://{args.host}:{port} (GET /ping, POST /invocations); Ctrl-C stops", flush=True))
    except ModelLoadError as error:
        raise UserError(f"--model {model}: {error}") from error
    return 0


def _quiet_http_logs() -> None:
    # httpx logs every request at INFO: thousands of lines in a load test
    logging.getLogger("httpx").setLevel(logging.WARNING)


def run_predict(args) -> int:
    """Print the top-k labels of each image; exit status 1 when any image got an error."""
    _quiet_http_logs()
    from pipeline.serving.client import PredictError, predict_http, predict_sagemaker, print_predictions

    if args.top_k < 1:
        raise UserError(f"--top-k must be >= 1, got {args.top_k}")
    missing = [str(p) for p in args.images if not p.is_file()]
    if missing:
        raise UserError(f"no such image file: {', '.join(missing)}")
    try:
        if args.endpoint:
            predictions = predict_http(args.endpoint, args.images, args.top_k)
        else:
            # the endpoint lives where the pipeline deployed it: pipeline.yaml's region, as for every AWS command
            region = args.region
            if region is None:
                from pipeline.config import load_config

                region = load_config(args.config).region
            predictions = predict_sagemaker(args.endpoint_name, args.images, args.top_k, region)
    except PredictError as error:
        raise UserError(str(error)) from error
    if args.json:
        print(json.dumps([vars(p) for p in predictions], indent=1, ensure_ascii=False))
    else:
        print_predictions(predictions)
    return 1 if any(p.error for p in predictions) else 0


def run_load(args) -> int:
    """Run the load test and print its report; exit status 1 when any request failed."""
    _quiet_http_logs()
    from pipeline.serving.load import LoadError, is_loopback, print_report
    from pipeline.serving.load import run_load as load

    if not is_loopback(args.endpoint):
        print(f"note: {args.endpoint} is not on this machine; only that URL is contacted", flush=True)
    try:
        report = load(args.endpoint, args.images, args.concurrency, args.requests, args.duration_limit, args.top_k)
    except LoadError as error:
        raise UserError(str(error)) from error
    if args.json:
        print(json.dumps(report.as_dict(), indent=1))
    else:
        print_report(report)
    return 1 if report.errors else 0

