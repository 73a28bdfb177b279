"""pipeline/serving/batching.py: dynamic batching with a fake predict function (no model: fast and exact)."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass

import pytest

from pipeline.serving.batching import DynamicBatcher, QueueFullError


@dataclass
class Rows:
    """A batchable input: integers, one per image, with ``concat`` and ``split`` like imgclf's ImageBatch."""

    values: list[int]

    def __len__(self) -> int:
        return len(self.values)

    @classmethod
    def concat(cls, parts):
        return cls([v for p in parts for v in p.values])

    def split(self, sizes):
        out, start = [], 0
        for size in sizes:
            out.append(Rows(self.values[start:start + size]))
            start += size
        return out


class Recorder:
    """predict(): doubles every value, records each forward pass, fails on negative values, may block."""

    def __init__(self):
        self.calls: list[list[int]] = []
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, rows):
        self.gate.wait(10)
        self.calls.append(list(rows.values) if isinstance(rows, Rows) else rows)
        if isinstance(rows, Rows) and any(v < 0 for v in rows.values):
            raise ValueError("negative value")
        return Rows([2 * v for v in rows.values]) if isinstance(rows, Rows) else rows * 2


async def _submit_all(batcher: DynamicBatcher, inputs):
    async def one(data):
        with batcher.arriving():
            await asyncio.sleep(0)
            return await batcher.submit(data)

    return await asyncio.gather(*(one(x) for x in inputs), return_exceptions=True)


def run(coroutine_function):
    return asyncio.run(coroutine_function())


def test_concurrent_requests_share_one_forward_pass_and_get_their_own_rows():
    predict = Recorder()

    async def main():
        batcher = DynamicBatcher(predict, max_batch_size=32, max_delay_s=0.5)
        batcher.start()
        predict.gate.clear()  # hold the worker so the other requests queue up behind the first
        asyncio.get_running_loop().call_later(0.05, predict.gate.set)
        results = await _submit_all(batcher, [Rows([i, 10 + i]) for i in range(5)])
        await batcher.stop()
        return results, batcher.stats

    results, stats = run(main)
    assert [r.values for r in results] == [[2 * i, 2 * (10 + i)] for i in range(5)]
    assert sum(len(call) for call in predict.calls) == 10
    assert len(predict.calls) < 5  # coalesced
    assert stats.requests == 5 and stats.images == 10


def test_batches_never_exceed_max_batch_size_but_a_large_request_runs_alone():
    predict = Recorder()

    async def main():
        batcher = DynamicBatcher(predict, max_batch_size=4, max_delay_s=0.2)
        batcher.start()
        results = await _submit_all(batcher, [Rows([1, 2, 3]), Rows([4, 5]), Rows([6] * 9), Rows([7])])
        await batcher.stop()
        return results

    results = run(main)
    assert [r.values for r in results] == [[2, 4, 6], [8, 10], [12] * 9, [14]]
    assert all(len(call) <= 4 for call in predict.calls if len(call) != 9)


def test_a_failing_request_fails_alone():
    predict = Recorder()

    async def main():
        batcher = DynamicBatcher(predict, max_batch_size=32, max_delay_s=0.2)
        batcher.start()
        results = await _submit_all(batcher, [Rows([1]), Rows([-1]), Rows([3])])
        await batcher.stop()
        return results

    first, bad, third = run(main)
    assert first.values == [2] and third.values == [6]
    assert isinstance(bad, ValueError)


def test_full_queue_raises_queue_full():
    predict = Recorder()
    predict.gate.clear()

    async def main():
        batcher = DynamicBatcher(predict, max_batch_size=1, max_delay_s=0.0, max_queue_size=2)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit(Rows([1])))
        await asyncio.sleep(0.05)  # the worker holds request 1 (blocked); the queue is empty again
        queued = [asyncio.ensure_future(batcher.submit(Rows([i]))) for i in (2, 3)]
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFullError):
            await batcher.submit(Rows([4]))
        predict.gate.set()
        results = await asyncio.gather(first, *queued)
        await batcher.stop()
        return results, batcher.stats.rejected

    results, rejected = run(main)
    assert [r.values for r in results] == [[2], [4], [6]] and rejected == 1


def test_a_lone_request_is_not_delayed():
    predict = Recorder()

    async def main():
        batcher = DynamicBatcher(predict, max_batch_size=32, max_delay_s=5.0)
        batcher.start()
        started = time.perf_counter()
        result = await batcher.submit(Rows([1]))
        elapsed = time.perf_counter() - started
        await batcher.stop()
        return result, elapsed

    result, elapsed = run(main)
    assert result.values == [2] and elapsed < 2.5  # no request was arriving: no 5 s wait


def test_inputs_without_concat_run_one_by_one():
    predict = Recorder()

    async def main():
        batcher = DynamicBatcher(predict, max_batch_size=32, max_delay_s=0.1)
        batcher.start()
        results = await _submit_all(batcher, [1, 2, 3])
        await batcher.stop()
        return results

    assert run(main) == [2, 4, 6]
    assert sorted(predict.calls) == [1, 2, 3]


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="max_batch_size"):
        DynamicBatcher(lambda x: x, max_batch_size=0)
