"""Live agreement guard: switch a layer's cache off at once when served answers drift.

Shadow completions tell, for a sample of hits, whether the served answer equals the base
model's. When even an upper confidence bound of the agreement served over all requests falls
below the target, the layer losing most is switched off for the current bundle version,
without waiting for the trainer; a new bundle version starts with a clean slate.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import replace

from services.inference.metrics import InferenceMetrics
from services.inference.plan import ActivePlan

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
    """Keeps the served agreement of each model's cascade at or above the target.

    Misses are the base model's own answers, so what a layer costs the cascade is its share
    of served rows times its disagreement among hits. With each layer's agreement bounded
    from above (Wilson, over its last `window` shadow completions, once it has `min_samples`),
    the served agreement is bounded from above too; when even that bound is below the target,
    the layer losing most agreement is switched off. Judging each layer's hits against the
    whole cascade's target instead would switch off a layer that answers 2% of requests at
    95% agreement (0.1% of answers wrong) after one bad shadow completion out of 20.
    """

    def __init__(
        self, target: float, metrics: InferenceMetrics, window: int = 200, min_samples: int = 20
    ) -> None:
        self.target = target
        self.window = window
        self.min_samples = min_samples
        self._metrics = metrics
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str, int], deque[bool]] = {}
        self._rows: Counter[tuple[str, int]] = Counter()  # (model, version) -> rows served
        self._hits: Counter[tuple[str, str, int]] = Counter()  # (model, layer, version) -> hits
        self._disabled: dict[str, tuple[int, set[str]]] = {}  # model -> (version, layers off)
        self._newest: dict[str, int] = {}  # model -> newest version seen

    def _current(self, model: str, version: int) -> bool:
        """False for a version older than one already seen; a newer one drops the older
        versions' evidence, so memory stays bounded however many versions are published."""
        newest = self._newest.get(model, version)
        if version < newest:
            return False
        if version > newest or model not in self._newest:
            self._newest[model] = version
            for counts in (self._seen, self._hits):
                for key in [k for k in counts if k[0] == model and k[-1] < version]:
                    del counts[key]
            for key in [k for k in self._rows if k[0] == model and k[1] < version]:
                del self._rows[key]
        return True

    def served(self, model: str, version: int, rows: int, hits: Mapping[str, int]) -> None:
        """Count `rows` answered through `version`'s cascade, `hits` of them per layer."""
        with self._lock:
            if not self._current(model, version):
                return
            self._rows[(model, version)] += rows
            for layer, n in hits.items():
                self._hits[(model, layer, version)] += n

    def observe(self, model: str, layer: str, version: int, agree: bool) -> None:
        """One shadow completion: did the hit at `layer` agree with the base model?"""
        with self._lock:
            if not self._current(model, version):
                return  # a late completion of a bundle already replaced
            seen = self._seen.setdefault((model, layer, version), deque(maxlen=self.window))
            seen.append(agree)
            off_version, off = self._disabled.get(model, (version, set()))
            if off_version != version:
                off = set()
            bound, worst = self._served_bound(model, version, off)
            if bound >= self.target or worst is None:
                return
            off.add(worst)
            self._disabled[model] = (version, off)
            self._metrics.guard_disabled.labels(model).set(len(off))
            agreed = self._seen[(model, worst, version)]
            log.warning(
                "guard: %s layer %s off for v%d (live agreement %d/%d; served agreement "
                "at most %.4f < target %.4f)",
                model,
                worst,
                version,
                sum(agreed),
                len(agreed),
                bound,
                self.target,
            )

    def _served_bound(self, model: str, version: int, off: set[str]) -> tuple[float, str | None]:
        """Upper bound of the served agreement over layers still on, and the layer losing most
        (None while no layer has min_samples shadow completions)."""
        rows = self._rows[(model, version)]
        lost, worst, worst_loss = 0.0, None, -1.0
        for (m, layer, v), seen in self._seen.items():
            if m != model or v != version or layer in off or len(seen) < self.min_samples:
                continue
            share = self._hits[(model, layer, version)] / rows if rows else 1.0
            agree = sum(seen)
            lost += share * (1.0 - wilson_upper(agree, len(seen)))
            loss = share * (1.0 - agree / len(seen))
            if loss > worst_loss:
                worst, worst_loss = layer, loss
        return 1.0 - lost, worst

    def filter(self, plan: ActivePlan) -> ActivePlan:
        """The plan without the layers switched off for its version."""
        version, off = self._disabled.get(plan.model, (None, set()))
        if version != plan.version or not off:
            return plan
        return replace(plan, layers={i: v for i, v in plan.layers.items() if v[0] not in off})
