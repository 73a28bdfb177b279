"""Dynamic batching: concurrent requests coalesced into one forward pass on a single inference thread.

Requests wait in a bounded asyncio queue. The batcher takes the first, then keeps taking requests until the batch
holds ``max_batch_size`` images or ``max_delay_s`` has passed since the first arrived; it waits only while other
requests are still being decoded (``arriving``), so a lone request is never delayed. The batch runs on one
worker thread, off the event loop (PyTorch parallelises the forward pass itself; one thread avoids oversubscribing
the cores). A full queue is back-pressure: :class:`QueueFullError`, which the server answers with 503 and
Retry-After, as TorchServe does when its job queue is full.

Inputs are combined when they offer ``concat`` (a classmethod over a list) and ``len`` (images), and predictions
split back with ``split(sizes)`` (see :class:`imgclf.serving.ImageBatch` and ``Predictions``); anything else runs
one request per forward pass. A batch that fails is retried one request at a time, so one bad request cannot fail
the requests batched with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from pipeline.serving.settings import MAX_BATCH_SIZE, MAX_DELAY_MS, MAX_QUEUE_SIZE

logger = logging.getLogger(__name__)


class QueueFullError(RuntimeError):
    """The batching queue is full: the caller should answer 503 with Retry-After."""


@dataclass
class _Item:
    data: object
    size: int
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


def _size(data) -> int:
    try:
        return max(1, len(data))
    except TypeError:
        return 1


@dataclass
class BatchStats:
    """Counters since start: forward passes, requests and images through them, requests refused as queue-full."""

    batches: int = 0
    requests: int = 0
    images: int = 0
    rejected: int = 0
    largest_batch: int = 0

    def as_dict(self) -> dict:
        mean = self.images / self.batches if self.batches else 0.0
        return {"batches": self.batches, "requests": self.requests, "images": self.images, "rejected": self.rejected,
                "largest_batch": self.largest_batch, "mean_batch_size": round(mean, 2)}


class DynamicBatcher:
    """Coalesce concurrent ``submit`` calls into batches for ``predict(data) -> prediction``.

    Args:
        predict: runs one (combined) input on the worker thread; returns the prediction.
        max_batch_size: most images per forward pass (default :data:`~pipeline.serving.settings.MAX_BATCH_SIZE`).
            A single request larger than this runs alone.
        max_delay_s: longest wait for more requests after the first (default ``MAX_DELAY_MS`` / 1000).
        max_queue_size: most requests waiting (default ``MAX_QUEUE_SIZE``); more raise :class:`QueueFullError`.
        initializer: run once on the worker thread before the first batch (e.g. torch thread settings).
    """

    def __init__(self, predict: Callable, max_batch_size: int = MAX_BATCH_SIZE,
                 max_delay_s: float = MAX_DELAY_MS / 1000, max_queue_size: int = MAX_QUEUE_SIZE,
                 initializer: Callable | None = None):
        if max_batch_size < 1 or max_queue_size < 1 or max_delay_s < 0:
            raise ValueError("max_batch_size and max_queue_size must be >= 1 and max_delay_s >= 0")
        self.predict = predict
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.max_queue_size = max_queue_size
        self.stats = BatchStats()
        self._queue: asyncio.Queue[_Item] | None = None
        self._carry: _Item | None = None
        self._arriving = 0
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference", initializer=initializer)
        self._batchable: bool | None = None  # learnt from the first combined batch

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the batching task on the running event loop."""
        self._queue = asyncio.Queue(maxsize=self.max_queue_size)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="dynamic-batcher")

    async def stop(self) -> None:
        """Stop batching; waiting requests fail with CancelledError. The worker thread finishes its batch."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=False, cancel_futures=True)

    def run_in_worker(self, function: Callable, *args):
        """Run ``function(*args)`` on the inference thread (e.g. a transform_fn that cannot be batched)."""
        return asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    # -- requests ------------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def arriving(self):
        """Mark a request as being decoded: the batcher waits up to ``max_delay_s`` for it to join the batch."""
        self._arriving += 1
        try:
            yield
        finally:
            self._arriving -= 1

    async def submit(self, data):
        """Queue ``data`` and return its prediction. Raises QueueFullError, or what ``predict`` raised for it."""
        if self._queue is None:
            raise RuntimeError("DynamicBatcher.start() was not called")
        item = _Item(data, _size(data), asyncio.get_running_loop().create_future())
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self.stats.rejected += 1
            raise QueueFullError(f"{self.max_queue_size} requests are already waiting") from None
        return await item.future

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    # -- the batching loop ---------------------------------------------------------------------------------------
    async def _next(self, timeout: float | None) -> _Item | None:
        if self._carry is not None:
            item, self._carry = self._carry, None
            return item
        if timeout is None:
            return await self._queue.get()
        try:
            return self._queue.get_nowait()
        except asyncio.QueueEmpty:
            if timeout <= 0:
                return None
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            return None

    async def _collect(self) -> list[_Item]:
        first = await self._next(None)
        batch, size = [first], first.size
        deadline = time.perf_counter() + self.max_delay_s
        while size < self.max_batch_size and self._batchable is not False:
            # Wait only while requests are on their way: otherwise take what is queued and go.
            timeout = deadline - time.perf_counter() if self._arriving else 0.0
            item = await self._next(max(timeout, 0.0))
            if item is None:
                break
            if size + item.size > self.max_batch_size:
                self._carry = item
                break
            batch.append(item)
            size += item.size
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [item for item in await self._collect() if not item.future.done()]
            if not batch:
                continue
            results = await loop.run_in_executor(self._executor, self._predict_batch, [i.data for i in batch])
            self.stats.batches += 1
            self.stats.requests += len(batch)
            images = sum(item.size for item in batch)
            self.stats.images += images
            self.stats.largest_batch = max(self.stats.largest_batch, images)
            for item, (ok, value) in zip(batch, results, strict=True):
                if item.future.done():  # the client went away
                    continue
                if ok:
                    item.future.set_result(value)
                else:
                    item.future.set_exception(value)

    # -- on the worker thread ----------------------------------------------------------------------------------
    def _predict_one(self, data) -> tuple[bool, object]:
        try:
            return True, self.predict(data)
        except Exception as error:  # handed to the request's future, answered there
            return False, error

    def _predict_batch(self, inputs: list) -> list[tuple[bool, object]]:
        if len(inputs) == 1:
            return [self._predict_one(inputs[0])]
        concat = getattr(type(inputs[0]), "concat", None)
        if self._batchable is False or concat is None or any(type(x) is not type(inputs[0]) for x in inputs):
            return [self._predict_one(x) for x in inputs]
        try:
            prediction = self.predict(concat(inputs))
            split = getattr(prediction, "split", None)
            if split is None:
                self._batchable = False
                raise TypeError(f"{type(prediction).__name__} has no split(sizes): batching requests one by one")
            parts = split([_size(x) for x in inputs])
            self._batchable = True
            return [(True, part) for part in parts]
        except Exception as error:  # retry alone, so one bad request fails only itself
            logger.warning("a batch of %d requests failed (%s): retrying them one by one", len(inputs), error)
            return [self._predict_one(x) for x in inputs]
