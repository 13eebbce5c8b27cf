"""Opportunistic micro-batching of concurrent lookups of one (model, layer), across streams.

Each lookup stream is served by its own gRPC worker thread. A lookup that finds nobody
evaluating its key evaluates itself at once, in its own thread: no hand-off, no timer, no added
wait (the common case, and the one that decides round-trip latency). Lookups that arrive while
an evaluation runs queue up; when it ends, the first of them is promoted and evaluates the whole
queue as one batch (leader/follower "combining"). So batches form exactly when lookups
contend, and each thread evaluates at most one batch, so no stream is starved by others.

`wait_s` (batch_wait_ms) bounds any extra gathering: only when a batch already holds more than
one lookup (contention is real) does the leader yield the GIL to let lookups that are being
decoded join, and never past `wait_s` after the oldest one arrived.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Waiting(Generic[T]):
    """One submitted item and the lock its thread sleeps on until it is evaluated or leads."""

    __slots__ = ("arrived", "item", "lead", "wake")

    def __init__(self, item: T, arrived: float) -> None:
        self.item = item
        self.arrived = arrived
        self.lead = False
        self.wake = threading.Lock()
        self.wake.acquire()  # released by whoever evaluates us or promotes us


class MicroBatcher(Generic[T]):
    """Evaluate submitted items in batches; `evaluate(items)` must not raise."""

    def __init__(
        self,
        evaluate: Callable[[list[T]], None],
        max_batch: int,
        wait_s: float = 0.0,
    ) -> None:
        assert max_batch >= 1 and wait_s >= 0
        self._evaluate = evaluate
        self._max = max_batch
        self._wait_s = wait_s
        self._lock = threading.Lock()
        self._queue: list[Waiting[T]] = []
        self._busy = False  # an evaluation is running (its thread will promote a successor)

    def submit(self, item: T, arrived: float | None = None) -> None:
        """Return once `item` was evaluated (by this thread or by a batch leader)."""
        waiting = Waiting(item, time.perf_counter() if arrived is None else arrived)
        with self._lock:
            self._queue.append(waiting)
            lead = not self._busy
            self._busy = True
        if not lead:
            waiting.wake.acquire()
            if not waiting.lead:
                return  # a leader evaluated us
        self._lead()

    def _lead(self) -> None:
        batch: list[Waiting[T]] = []
        try:
            batch = self._gather()
            self._evaluate([w.item for w in batch])
        finally:
            # Wake everyone evaluated, then hand leadership to the oldest waiting lookup
            # (even if evaluate raised, so no thread sleeps forever).
            for w in batch[1:]:
                w.wake.release()
            with self._lock:
                if self._queue:
                    successor = self._queue[0]
                    successor.lead = True
                    successor.wake.release()
                else:
                    self._busy = False

    def _take(self, room: int) -> list[Waiting[T]]:
        with self._lock:
            taken = self._queue[:room]
            del self._queue[:room]
        return taken

    def _gather(self) -> list[Waiting[T]]:
        # The leader is always the queue's head, so it is always in the batch it evaluates.
        batch = self._take(self._max)
        if len(batch) < 2 or self._wait_s <= 0:
            return batch
        deadline = batch[0].arrived + self._wait_s
        while len(batch) < self._max and time.perf_counter() < deadline:
            time.sleep(0)  # let threads holding a decoded lookup reach submit()
            more = self._take(self._max - len(batch))
            if not more:
                break
            batch += more
        return batch
