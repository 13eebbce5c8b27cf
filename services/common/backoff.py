"""Exponential retry delays, for loops that reconnect to something that went away.

One class for every such loop: a loop that sleeps between tries takes `next()`; one that is
polled and must not block (the Kafka clients) records a failure with `failed()` and asks
`ready()` before the next try. Both start again from `first` after `reset()`.
"""

from __future__ import annotations

import time


class Backoff:
    """Exponential retry delays: first, 2x first, ... up to `cap`; `reset` after a success."""

    def __init__(self, first: float, cap: float) -> None:
        self.first, self.cap = first, cap
        self.delay = first
        self.not_before = 0.0  # monotonic time before which `ready` says no

    def next(self) -> float:
        delay = self.delay
        self.delay = min(self.delay * 2, self.cap)
        return delay

    def failed(self) -> float:
        """A try failed: no other before the next delay has passed; returns that delay."""
        delay = self.next()
        self.not_before = time.monotonic() + delay
        return delay

    def ready(self) -> bool:
        """Whether the delay after the last `failed` has passed (always, after `reset`)."""
        return time.monotonic() >= self.not_before

    def reset(self) -> None:
        self.delay = self.first
        self.not_before = 0.0
