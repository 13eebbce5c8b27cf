"""Pays-for-itself switch: a layer whose lookups cost more than its hits save is switched off.

The planner chose each layer from costs measured offline; traffic and machine load move.
Per (model, layer) the engine reports what the layer's lookups cost the model's thread (handing
over, polling, applying) and what its hits saved (the measured compute of the stages that hit
rows no longer ran). Once a layer has `min_lookups` lookups in its window, a negative balance
switches it off for the bundle version in use, with a log line and a metric, as the live guard
does for agreement (Apparate's latency-focused ramp adjustment does the same). After
`retry_seconds` it gets another window, so a layer that pays again under other traffic comes
back; a new bundle version starts with every layer on. A hit's saving counts the whole
remaining model, not what a later layer would have saved, so the test is "does it pay at all".
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Protocol

from services.inference.metrics import InferenceMetrics
from services.inference.plan import ActivePlan

log = logging.getLogger(__name__)


class Lookup(Protocol):
    layer: str  # the layer whose probe it asked


@dataclass
class _Ledger:
    lookups: int = 0
    cost_s: float = 0.0
    saved_s: float = 0.0


class PayoffGuard:
    def __init__(
        self,
        metrics: InferenceMetrics,
        min_lookups: int = 300,
        retry_seconds: float = 120.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.min_lookups = min_lookups
        self.retry_seconds = retry_seconds
        self._clock = clock
        self._metrics = metrics
        self._lock = threading.Lock()
        self._ledgers: dict[tuple[str, str], _Ledger] = {}
        self._version: dict[str, int] = {}
        self._off: dict[tuple[str, str], float] = {}  # (model, layer) -> retry at

    def account(
        self,
        model: str,
        version: int,
        costs: Mapping[str, tuple[int, float]],
        saved: Mapping[str, float],
    ) -> None:
        """One request: per layer (lookups, seconds they cost), and seconds its hits saved."""
        with self._lock:
            if self._version.get(model) != version:
                self._new_version(model, version)
            for layer, (n, cost) in costs.items():
                ledger = self._ledgers.setdefault((model, layer), _Ledger())
                ledger.lookups += n
                ledger.cost_s += cost
                ledger.saved_s += saved.get(layer, 0.0)
                if ledger.lookups >= self.min_lookups:
                    self._judge(model, layer, version, ledger)

    def account_lookups(
        self,
        model: str,
        version: int,
        lookups: Iterable[Lookup],
        cost_s: float,
        saved: Mapping[str, float],
    ) -> None:
        """One request's lookups, each costing `cost_s`, and seconds its hits saved per layer."""
        costs: dict[str, tuple[int, float]] = {}
        for p in lookups:
            n, c = costs.get(p.layer, (0, 0.0))
            costs[p.layer] = (n + 1, c + cost_s)
        self.account(model, version, costs, saved)

    def _judge(self, model: str, layer: str, version: int, ledger: _Ledger) -> None:
        net_ms = 1e3 * (ledger.saved_s - ledger.cost_s) / ledger.lookups
        self._metrics.layer_net_ms.labels(model, layer).set(net_ms)
        if net_ms < 0:
            self._off[(model, layer)] = self._clock() + self.retry_seconds
            self._metrics.payoff_switched_off.labels(model, layer).inc()
            self._publish(model)
            log.warning(
                "payoff: %s layer %s off for v%d for %.0fs: its hits saved %.3f ms and its "
                "lookups cost %.3f ms per lookup over %d lookups",
                model,
                layer,
                version,
                self.retry_seconds,
                1e3 * ledger.saved_s / ledger.lookups,
                1e3 * ledger.cost_s / ledger.lookups,
                ledger.lookups,
            )
        del self._ledgers[(model, layer)]

    def _new_version(self, model: str, version: int) -> None:
        self._version[model] = version
        for key in [k for k in (*self._ledgers, *self._off) if k[0] == model]:
            self._ledgers.pop(key, None)
            self._off.pop(key, None)
        self._publish(model)

    def _publish(self, model: str) -> None:
        self._metrics.payoff_disabled.labels(model).set(sum(1 for m, _ in self._off if m == model))

    def disabled(self, model: str) -> set[str]:
        now = self._clock()
        with self._lock:
            for key in [k for k, until in self._off.items() if k[0] == model and until <= now]:
                del self._off[key]  # its retry window begins
                log.info("payoff: %s layer %s on again for another window", *key)
                self._publish(model)
            return {layer for m, layer in self._off if m == model}

    def filter(self, plan: ActivePlan) -> ActivePlan:
        """The plan without the layers that did not pay (for its version)."""
        if self._version.get(plan.model) != plan.version:
            return plan
        off = self.disabled(plan.model)
        if not off:
            return plan
        return replace(plan, layers={i: v for i, v in plan.layers.items() if v[0] not in off})
