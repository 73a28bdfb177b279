"""An endpoint's settings and their defaults: the one place they are written.

Light to import (no uvicorn, no torch), so that ``python -m pipeline serve``'s options can show the defaults without
loading the server. :mod:`pipeline.serving.server` serves an :class:`EndpointConfig`; both command lines that start
it (``python -m pipeline serve`` and the background endpoint's ``python -m pipeline.serving.server``) take the same
options from :func:`add_endpoint_arguments` and build the config with :func:`config_from_args`.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field

from imgclf.host import usable_cpus

#: Dynamic batching: images per forward pass, longest wait for more requests, requests waiting before a 503.
MAX_BATCH_SIZE = 32
MAX_DELAY_MS = 5.0
MAX_QUEUE_SIZE = 128


def default_num_threads() -> int:
    """Torch intra-op threads for this host: ``OMP_NUM_THREADS`` when set, else the CPUs this process may use."""
    try:
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    except (KeyError, ValueError):
        return usable_cpus()


@dataclass
class EndpointConfig:
    """Settings of one endpoint (``model``: model.tar.gz or an extracted folder; ``sha256``: hex digest the archive
    must have; ``model_version``: echoed in each response). Build it by keyword."""

    model: str
    sha256: str | None = None
    model_version: str | None = None
    num_threads: int = field(default_factory=default_num_threads)
    max_batch_size: int = MAX_BATCH_SIZE
    max_delay_ms: float = MAX_DELAY_MS
    max_queue_size: int = MAX_QUEUE_SIZE
    #: batch transform: concurrent requests per instance; enough to fill batches without long queues.
    max_concurrent_transforms: int = 8


def add_endpoint_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--num-threads``, ``--max-batch-size``, ``--max-delay-ms`` and ``--max-queue-size`` to ``parser``."""
    parser.add_argument("--num-threads", type=int, default=None,
                        help="torch threads (default: $OMP_NUM_THREADS, else the CPUs available)")
    parser.add_argument("--max-batch-size", type=int, default=MAX_BATCH_SIZE,
                        help=f"dynamic batching: images per forward pass (default {MAX_BATCH_SIZE})")
    parser.add_argument("--max-delay-ms", type=float, default=MAX_DELAY_MS,
                        help=f"dynamic batching: longest wait for more requests (default {MAX_DELAY_MS:g} ms)")
    parser.add_argument("--max-queue-size", type=int, default=MAX_QUEUE_SIZE,
                        help=f"requests waiting before 503 (default {MAX_QUEUE_SIZE})")


def config_from_args(args: argparse.Namespace, model: str, sha256: str | None,
                     model_version: str | None) -> EndpointConfig:
    """The :class:`EndpointConfig` of ``model`` with the options :func:`add_endpoint_arguments` added."""
    return EndpointConfig(model=model, sha256=sha256, model_version=model_version,
                          num_threads=args.num_threads or default_num_threads(), max_batch_size=args.max_batch_size,
                          max_delay_ms=args.max_delay_ms, max_queue_size=args.max_queue_size)
