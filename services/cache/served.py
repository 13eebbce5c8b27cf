"""Which models inference services serve, with which weights, as their plan requests say.

An inference service asks for each model's plan about once a second and states the
fingerprint of the weights it serves under that name. Those (model, fingerprint) pairs are
written to Redis (`gati.store.BundleStore.report_served`) so that `gati probes publish` can
refuse a bundle fitted to weights nobody serves under the name it is published as: without
that, a misnamed or stale bundle is accepted, loaded, and silently never used.

Noting a pair is a dict write on the server's event loop; the Redis writes happen in the
refresher's thread (`due`, then `written`), at most once per pair per `rewrite_s` while the
pair is still asked for, so no plan request ever waits on Redis. A pair nobody asks for any
more is not rewritten and expires from Redis by itself.
"""

from __future__ import annotations

import string
import threading
import time

from gati.store import usable_model_name

MAX_PAIRS = 1024  # GetPlan is unauthenticated: a bound keeps what a client can make us hold
MAX_NAME = 200
_HEX = frozenset(string.hexdigits)


def valid(model: str, fingerprint: str) -> bool:
    """A pair worth recording: a model name usable in Redis keys (as `gati.store` checks
    before a publish) and a hex fingerprint, both of bounded length."""
    return (
        len(model) <= MAX_NAME
        and usable_model_name(model)
        and 0 < len(fingerprint) <= 128
        and all(c in _HEX for c in fingerprint)
    )


class ServedModels:
    """(model, fingerprint) -> when last asked for and when last written to Redis."""

    def __init__(self, rewrite_s: float, forget_s: float) -> None:
        self.rewrite_s = rewrite_s  # rewrite a pair still asked for this often (< Redis TTL)
        self.forget_s = forget_s  # drop a pair not asked for this long (its Redis TTL)
        self._asked: dict[tuple[str, str], float] = {}  # monotonic time of the last ask
        self._written: dict[tuple[str, str], float] = {}  # monotonic time of the last write
        self._lock = threading.Lock()  # noted on the event loop, read by the refresher

    def note(self, model: str, fingerprint: str) -> bool:
        """Record one plan request; True when the pair is new (worth writing at once)."""
        if not valid(model, fingerprint):
            return False
        key, now = (model, fingerprint), time.monotonic()
        with self._lock:
            new = key not in self._asked
            if new and len(self._asked) >= MAX_PAIRS:
                self._forget(now)
                if len(self._asked) >= MAX_PAIRS:
                    return False
            self._asked[key] = now
        return new

    def due(self) -> list[tuple[str, str]]:
        """Pairs asked for since their last write, not written within `rewrite_s`."""
        now = time.monotonic()
        with self._lock:
            self._forget(now)
            return sorted(
                key
                for key, asked in self._asked.items()
                if (written := self._written.get(key)) is None
                or (asked > written and now - written >= self.rewrite_s)
            )

    def written(self, pairs: list[tuple[str, str]]) -> None:
        now = time.monotonic()
        with self._lock:
            for key in pairs:
                self._written[key] = now

    def _forget(self, now: float) -> None:
        for key in [k for k, t in self._asked.items() if now - t > self.forget_s]:
            del self._asked[key]
            self._written.pop(key, None)
