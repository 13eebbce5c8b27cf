"""The engine's learned-cache side in one object: the client, and what watches its probes.

The cache client plans and looks up; the live guard and the payoff switch narrow its plans and
hear how each pass went; shadow completions finish a sample of hits. An engine has this only
with a cache service and caches on. Each watcher is optional (None: off); the guard and the
payoff switch are asked for here, once per call, and the engine asks for `shadow` itself
where it decides whether to finish a hit.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from services.inference.cache_client import CacheClient, PendingLookup
from services.inference.guard import LiveGuard
from services.inference.payoff import PayoffGuard
from services.inference.plan import ActivePlan
from services.inference.shadow import ShadowRunner


class LearnedCaches:
    """The cache client with its watchers."""

    def __init__(
        self,
        client: CacheClient,
        guard: LiveGuard | None = None,
        payoff: PayoffGuard | None = None,
        shadow: ShadowRunner | None = None,
    ) -> None:
        self.client = client
        self.guard = guard
        self.payoff = payoff
        self.shadow = shadow

    def plan(self, model: str) -> ActivePlan | None:
        """The client's plan for `model`, less the layers the guard or the payoff switch
        turned off; None when there is none or the cache service is unreachable."""
        plan = self.client.plan(model)
        if plan is not None and self.guard is not None:
            plan = self.guard.filter(plan)
        if plan is not None and self.payoff is not None:
            plan = self.payoff.filter(plan)
        return plan

    def served(self, model: str, version: int, rows: int, hits: Mapping[str, int]) -> None:
        """How a pass went, for the live guard's agreement (no guard: nothing to count)."""
        if self.guard is not None:
            self.guard.served(model, version, rows, hits)

    def account_lookups(
        self,
        model: str,
        version: int,
        lookups: Iterable[PendingLookup],
        cost_s: float,
        saved: Mapping[str, float],
    ) -> None:
        """What a pass's lookups cost and saved, for the payoff switch (none: no tally)."""
        if self.payoff is not None:
            self.payoff.account_lookups(model, version, lookups, cost_s, saved)
