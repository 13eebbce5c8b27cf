"""The probes in use: one immutable ProbeRuntime per model, swapped whole.

Swapping is one dict assignment, so it is atomic under the GIL: a lookup takes a reference
to the runtime once per batch and finishes on it even if a new bundle lands meanwhile, and
the next batch sees the new one. Nothing here talks to Redis (see refresher.py).
"""

from __future__ import annotations

import threading

from gati.probes.serving.runtime import ProbeRuntime
from services.cache.metrics import CacheMetrics


class ProbeStore:
    def __init__(self, metrics: CacheMetrics) -> None:
        self._metrics = metrics
        self._runtimes: dict[str, ProbeRuntime] = {}
        self._changed = threading.Condition()

    def get(self, model: str) -> ProbeRuntime | None:
        return self._runtimes.get(model)

    def models(self) -> list[str]:
        return sorted(self._runtimes)

    def version(self, model: str) -> int:
        """Version in use for `model`; 0 when none (as the inference service reads it)."""
        runtime = self._runtimes.get(model)
        return 0 if runtime is None else runtime.version

    def install(self, model: str, runtime: ProbeRuntime) -> None:
        """Make `runtime` the one lookups of `model` use from their next batch on."""
        with self._changed:
            self._runtimes[model] = runtime
            self._metrics.bundle_version.labels(model).set(runtime.version)
            self._metrics.reloads.labels(model).inc()
            self._changed.notify_all()

    def wait_for(self, model: str, version: int, timeout: float) -> bool:
        """Block until `model` uses `version` (tests and start-up scripts); False on timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: self.version(model) == version, timeout)
