"""The background threads a service cannot do without, and health that says when one died.

Why: a loop that ends takes its job with it (bundles stop following Redis, records stop
reaching Kafka, the trainer stops learning) while health would still say SERVING and nothing
would restart the pod. So each loop catches what it did not expect, logs it, counts it here
(`gati_background_errors_total{thread}`) and goes on; and if a thread ends anyway (a
BaseException, a bug in the handler itself), a small watcher turns health NOT_SERVING and
`gati_thread_alive{thread}` drops to 0, naming which one. A dead thread does not come back,
so health stays NOT_SERVING until the process is restarted.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Protocol

from prometheus_client import CollectorRegistry

from services.common.metrics import ThreadMetrics

log = logging.getLogger(__name__)

WATCH_S = 0.25  # how often the watcher looks: how late health can be about a death


class HealthHandle(Protocol):
    """What the watcher needs of a gRPC server handle (GrpcServer, AioGrpcServer)."""

    failing: Callable[[], list[str]]  # reasons to be off for "" and the service names
    unready: Callable[[], list[str]]  # reasons to be off for the service names only
    stopped: threading.Event

    def set_serving(self, serving: bool = True) -> None: ...

    def refresh(self) -> None: ...


class Liveness:
    """A service's essential background threads: their metrics, and the health watcher."""

    def __init__(self, registry: CollectorRegistry, watch_s: float = WATCH_S) -> None:
        self.metrics = ThreadMetrics(registry)
        self.watch_s = watch_s
        self._checks: dict[str, Callable[[], bool]] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._watcher: threading.Thread | None = None

    def watch(self, name: str, alive: threading.Thread | Callable[[], bool]) -> None:
        """Count `name` as essential from now on (a started thread, or a check of its own)."""
        check = alive.is_alive if isinstance(alive, threading.Thread) else alive
        with self._lock:
            self._checks[name] = check
        self.metrics.alive.labels(name).set_function(lambda: 1.0 if _alive(check) else 0.0)
        self.metrics.errors.labels(name)  # exported at 0 from the start, so increase() works

    def error(self, thread: str) -> None:
        """One unexpected error caught by `thread`'s loop, which goes on (the caller logs it)."""
        self.metrics.errors.labels(thread).inc()

    def dead(self) -> list[str]:
        """The essential threads no longer running, by name."""
        with self._lock:
            checks = list(self._checks.items())
        return sorted(name for name, check in checks if not _alive(check))

    def guard(self, handle: HealthHandle) -> None:
        """Keep `handle`'s health NOT_SERVING whenever an essential thread is dead (its
        `failing` lists them after whatever it listed already), and watch: whenever the
        handle's reasons to be off change (a death here, stale bundles in `unready`), health
        is set again from them."""
        previous = handle.failing
        handle.failing = lambda: [*previous(), *(f"thread {n} stopped" for n in self.dead())]
        self._watcher = threading.Thread(
            target=self._watch, args=(handle,), name="liveness", daemon=True
        )
        self._watcher.start()

    def close(self) -> None:
        """Stop watching: the service is shutting down and its threads end on purpose."""
        self._closed.set()
        if self._watcher is not None and self._watcher is not threading.current_thread():
            self._watcher.join(timeout=5)

    def _watch(self, handle: HealthHandle) -> None:
        seen: set[str] = set()
        while not self._closed.wait(self.watch_s):
            if handle.stopped.is_set():
                return
            try:
                reasons = {*handle.failing(), *handle.unready()}
                if reasons == seen:
                    continue
                for why in sorted(reasons - seen):
                    log.error("health NOT_SERVING: %s", why)
                for why in sorted(seen - reasons):
                    log.warning("health no longer held off: %s", why)
                handle.refresh()  # what the service asked for, under the reasons now
                seen = reasons
            except Exception:  # the watcher must outlive whatever it watches
                log.exception("liveness check failed; checking again")


def _alive(check: Callable[[], bool]) -> bool:
    """A check that cannot answer counts as dead (and never breaks a scrape or a health set)."""
    try:
        return bool(check())
    except Exception:
        log.exception("liveness check failed")
        return False
