"""The pays-for-itself switch: a layer whose lookups cost more than its hits save goes off."""

from __future__ import annotations

from services.inference.metrics import InferenceMetrics
from services.inference.payoff import PayoffGuard
from services.inference.plan import ActivePlan

PLAN = ActivePlan("m", 1, {2: ("early", "pool1"), 20: ("late", "pool4")})


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def active(g: PayoffGuard, plan: ActivePlan = PLAN) -> set[str]:
    return {layer for layer, _ in g.filter(plan).layers.values()}


def requests(g: PayoffGuard, n: int, *, late_saves_ms: float, version: int = 1) -> None:
    """n requests, each one lookup per layer at 0.05 ms; `early` always saves 1 ms."""
    for _ in range(n):
        g.account(
            "m",
            version,
            {"early": (1, 50e-6), "late": (1, 50e-6)},
            {"early": 1e-3, "late": late_saves_ms * 1e-3},
        )


def test_a_layer_that_saves_less_than_it_costs_goes_off_and_one_that_pays_stays() -> None:
    metrics = InferenceMetrics()
    g = PayoffGuard(metrics, min_lookups=100, retry_seconds=60, clock=Clock())
    requests(g, 99, late_saves_ms=0.01)
    assert active(g) == {"early", "late"}  # nothing judged before min_lookups
    requests(g, 1, late_saves_ms=0.01)
    assert active(g) == {"early"}
    assert metrics.payoff_switched_off.labels("m", "late")._value.get() == 1
    assert metrics.payoff_disabled.labels("m")._value.get() == 1
    net = metrics.layer_net_ms.labels("m", "late")._value.get()
    assert abs(net - (0.01 - 0.05)) < 1e-9
    assert metrics.layer_net_ms.labels("m", "early")._value.get() > 0


def test_a_switched_off_layer_gets_another_window_after_the_retry_time() -> None:
    clock = Clock()
    g = PayoffGuard(InferenceMetrics(), min_lookups=10, retry_seconds=60, clock=clock)
    requests(g, 10, late_saves_ms=0.0)
    assert active(g) == {"early"}
    clock.now = 59.0
    assert active(g) == {"early"}
    clock.now = 61.0
    assert active(g) == {"early", "late"}
    requests(g, 10, late_saves_ms=0.2)  # traffic changed: it pays now and stays on
    assert active(g) == {"early", "late"}


def test_a_new_bundle_version_starts_with_every_layer_on() -> None:
    g = PayoffGuard(InferenceMetrics(), min_lookups=10, retry_seconds=60, clock=Clock())
    requests(g, 10, late_saves_ms=0.0)
    assert active(g) == {"early"}
    v2 = ActivePlan("m", 2, PLAN.layers)
    requests(g, 1, late_saves_ms=0.0, version=2)
    assert active(g, v2) == {"early", "late"}


class Sent:
    """What the guard reads of a pending lookup: the layer it asked."""

    def __init__(self, layer: str) -> None:
        self.layer = layer


def test_lookups_are_tallied_per_layer_each_at_the_pass_cost() -> None:
    metrics = InferenceMetrics()
    g = PayoffGuard(metrics, min_lookups=2, retry_seconds=60, clock=Clock())
    lookups = [Sent("early"), Sent("early"), Sent("late")]
    g.account_lookups("m", 1, lookups, 50e-6, {"early": 1e-3})
    # early: 2 lookups, 0.1 ms cost, 1 ms saved -> judged, pays 0.45 ms a lookup
    assert abs(metrics.layer_net_ms.labels("m", "early")._value.get() - 0.45) < 1e-9
    assert active(g) == {"early", "late"}  # late: 1 lookup, not judged yet
    g.account_lookups("m", 1, [Sent("late")], 50e-6, {})
    assert abs(metrics.layer_net_ms.labels("m", "late")._value.get() + 0.05) < 1e-9
    assert active(g) == {"early"}
