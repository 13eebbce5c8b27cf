"""Live agreement guard: switch a layer's cache off at once when its served answers drift.

Shadow completions tell, for a sample of hits, whether the served answer equals the base
model's. When the upper confidence bound of a layer's recent agreement falls below the
target, that layer is switched off for the current bundle version, without waiting for the
trainer; a new bundle version starts with a clean slate.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import deque
from dataclasses import replace

from services.inference.cache_client import ActivePlan
from services.inference.metrics import InferenceMetrics

log = logging.getLogger(__name__)


def wilson_upper(agree: int, n: int, z: float = 1.645) -> float:
    """One-sided upper confidence bound of a binomial proportion (Wilson score)."""
    if n == 0:
        return 1.0
    p = agree / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre + spread) / (1 + z * z / n)


class LiveGuard:
    def __init__(
        self, target: float, metrics: InferenceMetrics, window: int = 200, min_samples: int = 20
    ) -> None:
        self.target = target
        self.window = window
        self.min_samples = min_samples
        self._metrics = metrics
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str, int], deque[bool]] = {}
        self._disabled: dict[str, tuple[int, set[str]]] = {}  # model -> (version, layers off)

    def observe(self, model: str, layer: str, version: int, agree: bool) -> None:
        with self._lock:
            seen = self._seen.setdefault((model, layer, version), deque(maxlen=self.window))
            seen.append(agree)
            n, ok = len(seen), sum(seen)
            if n < self.min_samples or wilson_upper(ok, n) >= self.target:
                return
            off_version, off = self._disabled.get(model, (version, set()))
            if off_version != version:
                off = set()
            if layer not in off:
                off.add(layer)
                log.warning(
                    "guard: %s layer %s off for v%d (live agreement %d/%d)",
                    model,
                    layer,
                    version,
                    ok,
                    n,
                )
            self._disabled[model] = (version, off)
            self._metrics.guard_disabled.labels(model).set(len(off))

    def filter(self, plan: ActivePlan) -> ActivePlan:
        """The plan without the layers switched off for its version."""
        version, off = self._disabled.get(plan.model, (None, set()))
        if version != plan.version or not off:
            return plan
        return replace(plan, layers={i: v for i, v in plan.layers.items() if v[0] not in off})
