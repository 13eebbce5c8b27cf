"""The live guard judges the agreement served over all requests, not each layer's hits alone."""

from __future__ import annotations

from services.inference.guard import LiveGuard, wilson_upper
from services.inference.metrics import InferenceMetrics
from services.inference.plan import ActivePlan

PLAN = ActivePlan("m", 1, {2: ("early", "pool1"), 5: ("late", "pool2")})


def guard() -> LiveGuard:
    return LiveGuard(0.99, InferenceMetrics(), window=200, min_samples=20)


def shadow(g: LiveGuard, layer: str, agree: int, disagree: int, version: int = 1) -> None:
    for ok in [True] * agree + [False] * disagree:
        g.observe("m", layer, version, ok)


def active(g: LiveGuard, plan: ActivePlan = PLAN) -> set[str]:
    return {layer for layer, _ in g.filter(plan).layers.values()}


def test_a_rare_layer_with_one_bad_shadow_stays_on() -> None:
    g = guard()
    g.served("m", 1, 1000, {"early": 20})  # 2% of answers, 95% agreement: 0.1% wrong
    shadow(g, "early", 19, 1)
    assert wilson_upper(19, 20) < 0.99  # the per-layer rule would have switched it off
    assert active(g) == {"early", "late"}


def test_a_busy_bad_layer_goes_off_and_the_good_one_stays() -> None:
    g = guard()
    g.served("m", 1, 1000, {"early": 600, "late": 100})
    shadow(g, "late", 40, 0)
    shadow(g, "early", 14, 6)  # 60% of answers at ~70% agreement
    assert active(g) == {"late"}
    shadow(g, "late", 40, 0)  # the layer left on is fine: nothing more goes off
    assert active(g) == {"late"}


def test_layers_go_off_worst_first_until_the_bound_holds() -> None:
    g = guard()
    g.served("m", 1, 1000, {"early": 400, "late": 400})
    shadow(g, "early", 10, 10)
    shadow(g, "late", 15, 5)
    assert active(g) == set()
    # a new version starts with a clean slate
    assert active(g, ActivePlan("m", 2, PLAN.layers)) == {"early", "late"}


def test_nothing_is_judged_before_min_samples() -> None:
    g = guard()
    g.served("m", 1, 100, {"early": 100})
    shadow(g, "early", 0, 19)
    assert active(g) == {"early", "late"}
    shadow(g, "early", 0, 1)
    assert active(g) == {"late"}


def test_evidence_of_replaced_versions_is_dropped() -> None:
    g = guard()
    for version in range(1, 101):
        g.served("m", version, 10, {"early": 5})
        shadow(g, "early", 3, 0, version=version)
    assert {k[-1] for k in g._seen} == {100} and {k[1] for k in g._rows} == {100}
    shadow(g, "early", 0, 30, version=99)  # late completions of a replaced bundle: ignored
    assert active(g, ActivePlan("m", 100, PLAN.layers)) == {"early", "late"}
