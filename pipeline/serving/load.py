"""A bounded load test of one endpoint: ``--concurrency`` clients send ``--requests`` images, for at most
``--duration-limit`` seconds, to the one URL given (nothing else is contacted).

Reports requests/s, p50/p95/p99 latency in milliseconds and the count of each status code (a connection error
counts under its exception name). Images come from a folder (any depth, up to 256 files of the suffixes the
endpoint accepts) and are sent round-robin with their own Content-Type. The client shares the host's CPUs with a
local endpoint: on a small machine its own work lowers what it measures.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from pipeline.serving.client import PredictError, content_type_for, invocations_url

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".npy")
MAX_IMAGES = 256
#: Bounds of the load tool's arguments (it must not turn into a flood).
MAX_CONCURRENCY = 256
MAX_REQUESTS = 1_000_000
MAX_DURATION_S = 3600.0


class LoadError(ValueError):
    """Bad load-test arguments or inputs; the message names the fix."""


def list_images(folder: Path, limit: int = MAX_IMAGES) -> list[tuple[str, bytes, str]]:
    """Up to ``limit`` images under ``folder`` (sorted, hidden files skipped) as ``(name, bytes, content type)``.

    Raises:
        LoadError: no such folder, or no image in it.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise LoadError(f"images folder {folder} does not exist: give a folder of JPEG/PNG files (e.g. one made by "
                        "`python -m pipeline sample-data --out data/digits`)")
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not paths:
        raise LoadError(f"no images under {folder}: expected files ending in {', '.join(IMAGE_SUFFIXES)}")
    paths = paths[:: max(1, len(paths) // limit)][:limit]  # spread over the tree (every class), not its first files
    return [(str(p.relative_to(folder)), p.read_bytes(), content_type_for(p)) for p in paths]


@dataclass
class LoadReport:
    """What one load run measured. Latencies in milliseconds, one per answered request (any HTTP status); a request
    that got no answer (connection refused, timeout) counts in ``statuses`` under its exception name only, so that
    requests/s and latencies describe the endpoint, not how fast a closed port refuses."""

    url: str
    concurrency: int
    duration_s: float
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    stopped_by_time: bool = False
    server_stats: dict | None = None

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())

    @property
    def answered(self) -> int:
        """Requests that got an HTTP answer (statuses are numbers; unanswered ones are exception names)."""
        return sum(count for status, count in self.statuses.items() if status.isdigit())

    @property
    def requests_per_s(self) -> float:
        """Answered requests per second."""
        return self.answered / self.duration_s if self.duration_s > 0 else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    @property
    def errors(self) -> int:
        return sum(count for status, count in self.statuses.items() if status != "200")

    def as_dict(self) -> dict:
        return {"url": self.url, "concurrency": self.concurrency, "requests": self.requests, "answered": self.answered,
                "duration_s": round(self.duration_s, 3), "requests_per_s": round(self.requests_per_s, 2),
                "latency_ms": {f"p{q}": round(self.percentile(q), 2) for q in (50, 95, 99)},
                "statuses": dict(sorted(self.statuses.items())), "errors": self.errors,
                "stopped_by_time": self.stopped_by_time, "server_batching": self.server_stats}


async def _run(url: str, images: list, concurrency: int, requests: int, duration_limit_s: float,
               top_k: int | None, timeout_s: float) -> LoadReport:
    import httpx

    params = {"top_k": top_k} if top_k else None
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    report = LoadReport(url, concurrency, 0.0)
    sent = 0
    deadline = float("inf")  # set once the clients start

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal sent
        while sent < requests:
            if time.perf_counter() >= deadline:
                report.stopped_by_time = True
                return
            _, body, content_type = images[sent % len(images)]
            sent += 1
            began = time.perf_counter()
            try:
                response = await client.post(url, content=body, params=params,
                                             headers={"Content-Type": content_type, "Accept": "application/json"})
            except httpx.HTTPError as error:
                report.statuses[type(error).__name__] += 1
                continue
            report.latencies_ms.append((time.perf_counter() - began) * 1000.0)
            report.statuses[str(response.status_code)] += 1

    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:
        stats_url = url.rsplit("/invocations", 1)[0] + "/stats"
        before = await _server_stats(client, stats_url)
        started = time.perf_counter()
        deadline = started + duration_limit_s
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        report.duration_s = time.perf_counter() - started
        after = await _server_stats(client, stats_url)
    if before is not None and after is not None:
        batches, served = after["batches"] - before["batches"], after["images"] - before["images"]
        report.server_stats = {"batches": batches, "images": served,
                               "mean_batch_size": round(served / batches, 2) if batches else 0.0}
    return report


async def _server_stats(client, url: str) -> dict | None:
    """The local endpoint's batching counters (GET /stats), or None (e.g. a SageMaker endpoint)."""
    import httpx

    try:
        response = await client.get(url)
        payload = response.json() if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None
    return payload if isinstance(payload, dict) and "batches" in payload else None


def run_load(endpoint: str, images_dir: Path, concurrency: int = 8, requests: int = 2000,
             duration_limit_s: float = 60.0, top_k: int | None = None, timeout_s: float = 30.0) -> LoadReport:
    """Run the load test and return its :class:`LoadReport`.

    Args:
        endpoint: ``http://host:port`` (``/invocations`` is added) of the endpoint under test.
        concurrency: clients sending at once (1-256). requests: total requests (1-1,000,000).
        duration_limit_s: stop sending after this many seconds (0-3600), whatever the count.

    Raises:
        LoadError: arguments out of bounds, bad URL, or no images.
    """
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise LoadError(f"--concurrency must be 1-{MAX_CONCURRENCY}, got {concurrency}")
    if not 1 <= requests <= MAX_REQUESTS:
        raise LoadError(f"--requests must be 1-{MAX_REQUESTS}, got {requests}")
    if not 0 < duration_limit_s <= MAX_DURATION_S:
        raise LoadError(f"--duration-limit must be in (0, {MAX_DURATION_S:.0f}] seconds, got {duration_limit_s}")
    try:
        url = invocations_url(endpoint)
    except PredictError as error:
        raise LoadError(str(error)) from error
    images = list_images(images_dir)
    return asyncio.run(_run(url, images, concurrency, requests, duration_limit_s, top_k, timeout_s))


def is_loopback(url: str) -> bool:
    """True when ``url``'s host is this machine (localhost, 127.0.0.0/8, ::1)."""
    host = (urlsplit(url).hostname or "").lower()
    return host in ("localhost", "::1") or host.startswith("127.")


def print_report(report: LoadReport, console=None) -> None:
    """Print the report as one table."""
    from rich.table import Table

    from pipeline.cli import make_console

    console = console or make_console()
    table = Table(title=f"load: {report.url}", show_header=False)
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("concurrency", str(report.concurrency))
    table.add_row("requests", f"{report.requests}" + (" (stopped by --duration-limit)" if report.stopped_by_time
                                                       else ""))
    table.add_row("answered", str(report.answered))
    table.add_row("duration", f"{report.duration_s:.2f} s")
    if report.answered:
        table.add_row("requests/s (answered)", f"{report.requests_per_s:.1f}")
        for q in (50, 95, 99):
            table.add_row(f"latency p{q}", f"{report.percentile(q):.1f} ms")
    else:
        table.add_row("requests/s, latency", "none: no request was answered (is the endpoint running?)")
    for status, count in sorted(report.statuses.items()):
        table.add_row(f"status {status}", str(count))
    if report.server_stats and report.server_stats.get("batches"):
        table.add_row("server mean batch size", f"{report.server_stats['mean_batch_size']}")
    console.print(table)
