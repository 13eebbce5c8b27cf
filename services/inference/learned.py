"""The engine's learned-cache side in one object: the client, and what watches its probes.

The cache client plans and looks up; the live guard and the payoff switch narrow its plans and
hear how each pass went; shadow completions finish a sample of hits. An engine has this only
with a cache service and caches on, and a watcher not given is a stand-in that keeps every
layer and samples no hit, so the request path never asks which of them are there.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol

import torch

from services.inference.cache_client import CacheClient, PendingLookup
from services.inference.guard import LiveGuard
from services.inference.payoff import PayoffGuard
from services.inference.plan import ActivePlan
from services.inference.record_jobs import RowRecord
from services.inference.served import ServedModel
from services.inference.shadow import ShadowRunner


class Guard(Protocol):
    """What the engine asks of a live guard (`LiveGuard`)."""

    def filter(self, plan: ActivePlan) -> ActivePlan: ...

    def served(self, model: str, version: int, rows: int, hits: Mapping[str, int]) -> None: ...


class Payoff(Protocol):
    """What the engine asks of a payoff switch (`PayoffGuard`)."""

    def filter(self, plan: ActivePlan) -> ActivePlan: ...

    def account_lookups(
        self,
        model: str,
        version: int,
        lookups: Iterable[PendingLookup],
        cost_s: float,
        saved: Mapping[str, float],
    ) -> None: ...


class Shadow(Protocol):
    """What the engine asks of shadow completions (`ShadowRunner`)."""

    def wanted(self) -> bool: ...

    def submit(
        self,
        served: ServedModel,
        stage: int,
        h: torch.Tensor,
        rows: list[tuple[int, str, int, RowRecord | None]],
        request_id: str,
        version: int,
        cache: CacheClient | None = None,
    ) -> bool: ...


class _Absent:
    """Stands in for a live guard, payoff switch or shadow runner not given. Its methods have
    the real signatures, so a call on the request path builds no argument tuple or dict."""

    def filter(self, plan: ActivePlan) -> ActivePlan:
        return plan

    def served(self, model: str, version: int, rows: int, hits: Mapping[str, int]) -> None:
        """No agreement to guard: nothing to count."""

    def account_lookups(
        self,
        model: str,
        version: int,
        lookups: Iterable[PendingLookup],
        cost_s: float,
        saved: Mapping[str, float],
    ) -> None:
        """No payoff to judge: nothing to tally."""

    def wanted(self) -> bool:
        return False

    def submit(
        self,
        served: ServedModel,
        stage: int,
        h: torch.Tensor,
        rows: list[tuple[int, str, int, RowRecord | None]],
        request_id: str,
        version: int,
        cache: CacheClient | None = None,
    ) -> bool:
        """Never called (`wanted` is False); no completion runs."""
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
        self.guard: Guard = _ABSENT if guard is None else guard
        self.payoff: Payoff = _ABSENT if payoff is None else payoff
        self.shadow: Shadow = _ABSENT if shadow is None else shadow

    def plan(self, model: str) -> ActivePlan | None:
        """The client's plan for `model`, less the layers the guard or the payoff switch
        turned off; None when there is none or the cache service is unreachable."""
        plan = self.client.plan(model)
        return None if plan is None else self.payoff.filter(self.guard.filter(plan))
