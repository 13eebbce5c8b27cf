"""The engine's learned-cache side in one object: the client, and what watches its probes.

The cache client plans and looks up; the live guard and the payoff switch narrow its plans and
hear how each pass went; shadow completions finish a sample of hits. An engine has this only
with a cache service and caches on, and a watcher not given is a stand-in that keeps every
layer and samples no hit, so the request path never asks which of them are there.
"""

from __future__ import annotations

from services.inference.cache_client import CacheClient
from services.inference.guard import LiveGuard
from services.inference.payoff import PayoffGuard
from services.inference.plan import ActivePlan
from services.inference.shadow import ShadowRunner


class _Absent:
    """Stands in for a live guard, payoff switch or shadow runner not given."""

    def filter(self, plan: ActivePlan) -> ActivePlan:
        return plan

    def served(self, *_: object) -> None:
        """No agreement to guard: nothing to count."""

    def account_lookups(self, *_: object) -> None:
        """No payoff to judge: nothing to tally."""

    def wanted(self) -> bool:
        return False

    def submit(self, *_: object, **__: object) -> bool:
        return False


_ABSENT = _Absent()


class LearnedCaches:
    """The cache client with its watchers; a watcher given as None is the stand-in."""

    def __init__(
        self,
        client: CacheClient,
        guard: LiveGuard | None = None,
        payoff: PayoffGuard | None = None,
        shadow: ShadowRunner | None = None,
    ) -> None:
        self.client = client
        self.guard: LiveGuard | _Absent = _ABSENT if guard is None else guard
        self.payoff: PayoffGuard | _Absent = _ABSENT if payoff is None else payoff
        self.shadow: ShadowRunner | _Absent = _ABSENT if shadow is None else shadow

    def plan(self, model: str) -> ActivePlan | None:
        """The client's plan for `model`, less the layers the guard or the payoff switch
        turned off; None when there is none or the cache service is unreachable."""
        plan = self.client.plan(model)
        return None if plan is None else self.payoff.filter(self.guard.filter(plan))
