"""Optimizer: exact under its model, deterministic, and says "no caches" when they do not pay."""

from __future__ import annotations

import itertools
import random

import pytest

from gati.probes.fitting.optimizer import Candidate, choose_plan, plan_cost

FULL = 10.0  # ms, ten stages of 1 ms


def cand(
    pos: int,
    coverage: float,
    overhead: float = 0.05,
    memory: int = 1000,
    variant: str = "linear",
    delay: float = 0.0,
) -> Candidate:
    return Candidate(f"cut{pos}", variant, pos, float(pos + 1), coverage, overhead, delay, memory)


def test_nothing_when_lookups_cost_more_than_they_save() -> None:
    # each probe would answer 5% of requests, saving at most 0.05 * 9 ms = 0.45 ms, at 1 ms each
    cands = [cand(p, 0.05, overhead=1.0) for p in range(9)]
    plan = choose_plan(cands, FULL)
    assert plan.chosen == () and plan.expected_ms == FULL and plan.speedup == 1.0


def test_nothing_when_no_probe_is_trusted() -> None:
    plan = choose_plan([cand(p, 0.0) for p in range(9)], FULL)
    assert plan.chosen == ()


def test_obvious_layer() -> None:
    # cut3 answers 90% of requests after 4 ms; every other cut only 2%
    cands = [cand(p, 0.9 if p == 3 else 0.02) for p in range(9)]
    plan = choose_plan(cands, FULL, max_probes=1)
    assert [c.layer for c in plan.chosen] == ["cut3"]
    assert plan.expected_ms == pytest.approx(0.05 + 0.9 * 4 + 0.1 * 10)
    # given more probes it still needs nothing else but perhaps a cheap earlier one: never worse
    more = choose_plan(cands, FULL, max_probes=4)
    assert "cut3" in [c.layer for c in more.chosen]
    assert more.expected_ms <= plan.expected_ms


def test_variant_choice_and_memory_budget() -> None:
    big = cand(2, 0.8, memory=10_000_000, variant="conv")
    small = cand(2, 0.6, memory=10_000, variant="linear")
    assert [c.variant for c in choose_plan([big, small], FULL).chosen] == ["conv"]
    assert [c.variant for c in choose_plan([big, small], FULL, memory_budget=1_000_000).chosen] == [
        "linear"
    ]
    assert choose_plan([big], FULL, memory_budget=1000).chosen == ()


def test_remote_hit_delay_caps_at_full_latency() -> None:
    # a hit at the last cut arrives after the base model would have answered: worthless
    late = Candidate("cut9", "linear", 9, 9.9, 0.99, 0.02, 0.3, 1000)
    assert choose_plan([late], FULL).chosen == ()


def test_min_gain() -> None:
    c = cand(8, 0.5, overhead=0.0)  # saves 0.5 * 1 ms = 5% of 10 ms
    assert choose_plan([c], FULL, min_gain=0.04).chosen == (c,)
    assert choose_plan([c], FULL, min_gain=0.06).chosen == ()


def _brute_force(cands, full, budget, max_probes):
    best = (full, ())
    for m in range(1, max_probes + 1):
        for combo in itertools.combinations(sorted(cands, key=lambda c: c.key), m):
            if len({c.position for c in combo}) < m or sum(c.memory_bytes for c in combo) > budget:
                continue
            cost = plan_cost(combo, full)
            if cost < best[0] - 1e-12:
                best = (cost, combo)
    return best


@pytest.mark.parametrize("seed", range(12))
def test_exact_against_exhaustive_search(seed: int) -> None:
    rng = random.Random(seed)
    cands = [
        Candidate(
            f"cut{p}",
            v,
            p,
            float(p + 1),
            rng.random() ** 2,
            rng.uniform(0, 0.6),
            rng.choice([0.0, 0.3]),
            rng.choice([100, 400, 900]),
        )
        for p in range(7)
        for v in ("linear", "mlp")
    ]
    budget, max_probes = 1500, 3
    plan = choose_plan(cands, FULL, memory_budget=budget, max_probes=max_probes)
    cost, _ = _brute_force(cands, FULL, budget, max_probes)
    assert plan.expected_ms == pytest.approx(cost, abs=1e-9)
    assert plan_cost(plan.chosen, FULL) == pytest.approx(plan.expected_ms, abs=1e-9)
    assert len(plan.chosen) <= max_probes and plan.memory_bytes <= budget
    # deterministic whatever the input order
    shuffled = cands[:]
    rng.shuffle(shuffled)
    assert choose_plan(shuffled, FULL, memory_budget=budget, max_probes=max_probes) == plan
