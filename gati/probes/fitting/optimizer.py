"""Which cuts get a probe, and which variant: minimise expected latency, exactly.

Inputs per candidate (cut, variant): when its cut is reached (ms), the share of requests it
would answer on its own (`coverage`, at the agreement the cascade must keep), what a lookup
costs on the critical path (`overhead_ms`) and on a hit (`hit_delay_ms`), and its memory.

Model (stated, because the search is exact only for it): coverage is *nested*, i.e. a request
a probe answers would also be answered by any later probe of higher coverage. Then a plan
p_1 < ... < p_m with coverages c_1 < ... < c_m (a probe not raising coverage only adds
overhead, so an optimal plan never holds one) costs
    E = sum_i (1 - c_{i-1}) * overhead_i + sum_i (c_i - c_{i-1}) * (t_i + delay_i)
        + (1 - c_m) * full_ms,                                     with c_0 = 0,
which adds up transition by transition. Dynamic programming over (last probe, probes used)
keeps, per state, the Pareto set of (expected latency, memory): exact under a memory budget
and a maximum number of probes, with no discretisation. Ties break on memory, then on the
plan's names, so the answer is deterministic. Real coverage of a union is at least the max,
so the model is pessimistic about plans; the calibrated cascade is then measured for real.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Candidate:
    layer: str
    variant: str
    position: int  # stage index of the cut: plans are in increasing position
    time_to_cut_ms: float
    coverage: float  # share of requests this probe alone answers, 0..1
    overhead_ms: float  # paid by every request that reaches the lookup
    hit_delay_ms: float  # from the cut (plus overheads) to the answer, on a hit
    memory_bytes: int

    @property
    def key(self) -> tuple[int, str, str]:
        return (self.position, self.layer, self.variant)


@dataclass(frozen=True)
class Plan:
    chosen: tuple[Candidate, ...]  # in stage order; empty = no caches pay
    expected_ms: float  # under the nested-coverage model
    full_ms: float

    @property
    def speedup(self) -> float:
        return self.full_ms / self.expected_ms if self.expected_ms > 0 else 1.0

    @property
    def memory_bytes(self) -> int:
        return sum(c.memory_bytes for c in self.chosen)


def plan_cost(chosen: Sequence[Candidate], full_ms: float) -> float:
    """Expected latency of a plan under the nested-coverage model (chosen in stage order)."""
    cost, covered = 0.0, 0.0
    for c in chosen:
        cov = max(covered, c.coverage)
        exit_ms = min(c.time_to_cut_ms + c.hit_delay_ms, full_ms)
        cost += (1.0 - covered) * c.overhead_ms + (cov - covered) * exit_ms
        covered = cov
    return cost + (1.0 - covered) * full_ms


def choose_plan(
    candidates: Sequence[Candidate],
    full_ms: float,
    *,
    memory_budget: int | None = None,
    max_probes: int = 8,
    min_gain: float = 0.0,
) -> Plan:
    """The plan of least expected latency; the empty plan unless one beats it by `min_gain`
    (a fraction of full_ms)."""
    if full_ms <= 0:
        raise ValueError(f"full_ms must be positive, got {full_ms}")
    budget = float("inf") if memory_budget is None else memory_budget
    cands = sorted(
        (c for c in candidates if c.coverage > 0 and c.memory_bytes <= budget), key=lambda c: c.key
    )
    # states[i][m]: Pareto list of (partial cost, memory, plan indices) ending at cands[i]
    # with m probes. Partial cost excludes the (1 - c_last) * full_ms tail.
    states: list[dict[int, list[tuple[float, int, tuple[int, ...]]]]] = [{} for _ in cands]
    for i, c in enumerate(cands):
        first = c.overhead_ms + c.coverage * min(c.time_to_cut_ms + c.hit_delay_ms, full_ms)
        _insert(states[i].setdefault(1, []), (first, c.memory_bytes, (i,)))
        for j in range(i):
            p = cands[j]
            if p.position >= c.position or p.coverage >= c.coverage:
                continue
            step = (1.0 - p.coverage) * c.overhead_ms + (c.coverage - p.coverage) * min(
                c.time_to_cut_ms + c.hit_delay_ms, full_ms
            )
            for m, front in states[j].items():
                if m + 1 > max_probes:
                    continue
                for cost, mem, plan in front:
                    if mem + c.memory_bytes <= budget:
                        _insert(
                            states[i].setdefault(m + 1, []),
                            (cost + step, mem + c.memory_bytes, (*plan, i)),
                        )
    best: tuple[float, int, tuple[str, ...], tuple[int, ...]] = (full_ms, 0, (), ())
    for i, per_count in enumerate(states):
        for front in per_count.values():
            for cost, mem, plan in front:
                total = cost + (1.0 - cands[i].coverage) * full_ms
                names = tuple(f"{cands[k].layer}:{cands[k].variant}" for k in plan)
                if (total, mem, names) < best[:3]:
                    best = (total, mem, names, plan)
    if best[3] and best[0] >= full_ms * (1.0 - min_gain):
        best = (full_ms, 0, (), ())
    return Plan(tuple(cands[k] for k in best[3]), best[0], full_ms)


def _insert(
    front: list[tuple[float, int, tuple[int, ...]]], item: tuple[float, int, tuple[int, ...]]
) -> None:
    """Keep `front` the Pareto set of (cost, memory): drop dominated entries."""
    cost, mem, _ = item
    for c, m, _p in front:
        if c <= cost and m <= mem:
            return
    front[:] = [e for e in front if not (cost <= e[0] and mem <= e[1])]
    front.append(item)
