"""``tracking-ui``: open the workspace's MLflow tracking store in the MLflow UI, on this machine only."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from pipeline.errors import UserError

LOOPBACK = "127.0.0.1"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "tracking-ui",
        help="open the local MLflow store (runs/mlflow.db) in the MLflow UI on 127.0.0.1",
        description="Serve the MLflow UI over the workspace's tracking store: every local execution is a run of the "
        "pipeline's experiment, with a nested run per tuning trial, training, evaluation and debug job. Listens "
        "on 127.0.0.1 only (`mlflow ui` underneath, one worker). For a SageMaker managed MLflow tracking server "
        "open its UI from SageMaker Studio or `aws sagemaker create-presigned-mlflow-tracking-server-url` "
        "(docs/tracking.md).",
    )
    parser.add_argument("--runs", type=Path, default=Path("runs"), help="the runs folder of run-local (default runs)")
    parser.add_argument("--port", type=int, default=5000, help="port on 127.0.0.1 (default 5000)")
    parser.set_defaults(func=run)


def ui_command(runs: Path, port: int) -> list[str]:
    """The ``mlflow ui`` command line serving ``<runs>/mlflow.db`` (artifacts ``<runs>/mlartifacts``) on loopback.

    Raises:
        UserError: no tracking store in ``runs`` yet (run ``run-local`` first), or a port outside 1-65535.
    """
    from pipeline.tracking import LOCAL_DATABASE, local_artifact_uri, local_tracking_uri

    if not (Path(runs) / LOCAL_DATABASE).is_file():
        raise UserError(f"{Path(runs) / LOCAL_DATABASE}: no tracking store yet; run `python -m pipeline run-local` "
                        "first (with tracking.enabled true), or pass --runs <folder of your runs>")
    if not 0 < port < 65536:
        raise UserError(f"--port {port}: choose a port between 1 and 65535")
    return [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", local_tracking_uri(runs),
            "--default-artifact-root", local_artifact_uri(runs), "--host", LOOPBACK, "--port", str(port),
            "--workers", "1"]  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Run the MLflow UI until interrupted; returns its exit status."""
    command = ui_command(args.runs, args.port)
    print(f"MLflow UI on http://{LOOPBACK}:{args.port} (store {command[5]}); Ctrl-C stops it", flush=True)
    return subprocess.call(command)
