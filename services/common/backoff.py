"""Exponential retry delays, for loops that reconnect to something that went away."""

from __future__ import annotations


class Backoff:
    """Exponential retry delays: first, 2x first, ... up to `cap`; `reset` after a success."""

    def __init__(self, first: float, cap: float) -> None:
        self.first, self.cap = first, cap
        self.delay = first

    def next(self) -> float:
        delay = self.delay
        self.delay = min(self.delay * 2, self.cap)
        return delay

    def reset(self) -> None:
        self.delay = self.first
