"""LearnedCaches: the cache client's plans narrowed by whichever watchers are given."""

from __future__ import annotations

from services.inference.guard import LiveGuard
from services.inference.learned import LearnedCaches
from services.inference.metrics import InferenceMetrics
from services.inference.payoff import PayoffGuard
from services.inference.plan import ActivePlan
from tests.inference.test_payoff import Clock, Sent

PLAN = ActivePlan("m", 1, {2: ("early", "pool1"), 20: ("late", "pool4")})


class Plans:
    """The one thing LearnedCaches asks of the cache client here: its current plan."""

    def __init__(self, plan: ActivePlan | None) -> None:
        self.current = plan

    def plan(self, model: str) -> ActivePlan | None:
        return self.current if model == "m" else None


def layers(plan: ActivePlan | None) -> set[str]:
    assert plan is not None
    return {layer for layer, _ in plan.layers.values()}


def test_without_watchers_the_plan_is_the_clients_and_passes_are_not_tallied() -> None:
    learned = LearnedCaches(Plans(PLAN))  # type: ignore[arg-type]
    assert learned.plan("m") is PLAN
    assert learned.plan("other") is None
    learned.served("m", 1, 4, {"early": 2})  # nothing to count: no guard
    learned.account_lookups("m", 1, [Sent("late")], 1.0, {})  # no payoff switch
    assert learned.plan("m") is PLAN


def test_a_layer_the_payoff_switch_turned_off_leaves_the_plan() -> None:
    metrics = InferenceMetrics()
    payoff = PayoffGuard(metrics, min_lookups=1, retry_seconds=60, clock=Clock())
    guard = LiveGuard(0.99, metrics)
    learned = LearnedCaches(Plans(PLAN), guard=guard, payoff=payoff)  # type: ignore[arg-type]
    assert layers(learned.plan("m")) == {"early", "late"}
    learned.account_lookups("m", 1, [Sent("late")], 1e-3, {})  # cost 1 ms, saved nothing
    assert layers(learned.plan("m")) == {"early"}
    learned.served("m", 1, 4, {"early": 2})  # the guard hears the pass and keeps the layer
    assert layers(learned.plan("m")) == {"early"}
    assert learned.plan("other") is None  # no plan from the client: none to narrow
