"""MicroBatcher: no wait when alone, batches when contended, everyone answered once."""

from __future__ import annotations

import contextlib
import threading
import time

from services.cache.batcher import MicroBatcher


class Recorder:
    def __init__(self, delay_s: float = 0.0, fail: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.delay_s = delay_s
        self.fail = fail
        self.threads: set[str] = set()

    def __call__(self, items: list[dict]) -> None:
        self.batches.append([i["n"] for i in items])
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay_s)
        if self.fail:
            raise RuntimeError("boom")
        for item in items:
            item["done"] = True


def test_single_lookup_is_evaluated_at_once_in_its_own_thread() -> None:
    rec = Recorder()
    batcher = MicroBatcher(rec, max_batch=8, wait_s=0.05)
    item = {"n": 1}
    start = time.perf_counter()
    batcher.submit(item)
    assert time.perf_counter() - start < 0.01  # wait_s is not spent when nobody else is queued
    assert item["done"] and rec.batches == [[1]]
    assert rec.threads == {threading.current_thread().name}


def run_concurrently(batcher: MicroBatcher, threads: int, per_thread: int) -> list[dict]:
    items = [[{"n": t * 1000 + i} for i in range(per_thread)] for t in range(threads)]
    barrier = threading.Barrier(threads)

    def worker(mine: list[dict]) -> None:
        barrier.wait()
        for item in mine:
            batcher.submit(item)
            assert item["done"]  # answered before submit returned

    pool = [threading.Thread(target=worker, args=(m,)) for m in items]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout=30)
    return [i for m in items for i in m]


def test_contended_lookups_are_batched_and_each_evaluated_once() -> None:
    rec = Recorder(delay_s=0.002)
    batcher = MicroBatcher(rec, max_batch=4, wait_s=0.0)
    items = run_concurrently(batcher, threads=6, per_thread=20)
    evaluated = sorted(n for b in rec.batches for n in b)
    assert evaluated == sorted(i["n"] for i in items)  # exactly once each
    assert max(len(b) for b in rec.batches) == 4  # capped by max_batch
    assert sum(len(b) > 1 for b in rec.batches) > len(rec.batches) // 2


def test_a_failing_evaluation_wakes_everyone() -> None:
    """evaluate must not raise; if it does anyway, no thread may sleep forever."""
    rec = Recorder(delay_s=0.001, fail=True)
    batcher = MicroBatcher(rec, max_batch=8)
    done: list[int] = []

    def worker(n: int) -> None:
        with contextlib.suppress(RuntimeError):  # leaders see the error, followers do not
            batcher.submit({"n": n})
        done.append(n)

    pool = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout=10)
    assert sorted(done) == list(range(6))
