"""Which probes to ship: optimizer rounds and a local search, judged on the selector rows.

The exact optimizer (`fitting.optimizer`) ranks plans under a nested-coverage model; here
its answers are checked against the real cascade: selectors fitted along the plan (each reading
the previous probe's answer), lam calibrated on the selector rows, expected latency measured.
The threshold rows are never touched here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from gati.probes.fitting.calibration import Calibration, calibrate_cascade, first_exit, savings
from gati.probes.fitting.candidates import ProbeCandidate, SelectorRows
from gati.probes.fitting.costs import CostModel
from gati.probes.fitting.optimizer import Candidate, choose_plan
from gati.probes.fitting.selection import SELECTOR_OPTIONS, fit_selector, uses_memory
from gati.probes.serving.features import build_features
from gati.probes.serving.selectors import Selector

if TYPE_CHECKING:
    from gati.probes.fitting.fit_config import FitConfig


def as_candidate(c: ProbeCandidate, cost: CostModel) -> Candidate:
    mem = sum(v.nbytes for v in c.roles.values())
    if c.memory is not None and uses_memory(c.pre_selector) and c.variant != "knn":
        mem += sum(v.nbytes for v in c.memory.tensors().values())
    return Candidate(
        c.layer,
        f"{c.variant}/{c.option}",
        cost.position(c.layer),
        cost.time_to_cut(c.layer),
        c.coverage,
        cost.overhead(c.lookup_ms),
        cost.hit_delay(c.layer, c.lookup_ms),
        mem,
    )


def plan_selectors(
    chosen: Sequence[ProbeCandidate], cfg: FitConfig, k: int, weights: SelectorRows
) -> list[Selector]:
    """Selectors along the plan, fitted on the selector rows; each may read the previous one's
    probe answer (whatever it decided: features do not depend on earlier exits)."""
    out, prev = [], None
    for c in chosen:
        out.append(fit_selector(cfg, k, c.sel, prev, weights, c.option, coverage=False)[0])
        prev = (c.sel.out.label, c.sel.out.conf)
    return out


def plan_scores(
    chosen: Sequence[ProbeCandidate], selectors: Sequence[Selector], part: str, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """(scores [n, L], correct [n, L]) of the plan on the n rows of part "sel" or "thr"."""
    parts = [getattr(c, part) for c in chosen]
    scores, correct = np.zeros((n, len(parts)), np.float32), np.zeros((n, len(parts)), bool)
    pl: np.ndarray | None = None
    pc: np.ndarray | None = None
    for i, (p, sel) in enumerate(zip(parts, selectors, strict=True)):
        feats = build_features(sel.features, p.out, prev_label=pl, prev_conf=pc, novelty=p.novelty)
        scores[:, i], correct[:, i] = sel.score(feats), p.correct
        pl, pc = p.out.label, p.out.conf
    return scores, correct


def calibrate_plan(
    chosen: Sequence[ProbeCandidate],
    selectors: Sequence[Selector],
    cfg: FitConfig,
    cost: CostModel,
    part: str,
    groups: np.ndarray,
) -> Calibration:
    scores, correct = plan_scores(chosen, selectors, part, len(groups))
    s = savings([cost.time_to_cut(c.layer) for c in chosen], cost.full_ms)
    return calibrate_cascade(
        scores,
        correct,
        s,
        target=cfg.agreement_target,
        mode=cfg.calibration,
        delta=cfg.delta,
        margin=cfg.margin,
        groups=groups,
    )


def expected_ms(
    chosen: Sequence[ProbeCandidate],
    cfg: FitConfig,
    cost: CostModel,
    k: int,
    groups: np.ndarray,
    weights: SelectorRows,
) -> float:
    """Expected latency of a plan on the selector rows (selectors and lam fitted there)."""
    if not chosen:
        return cost.full_ms
    sels = plan_selectors(chosen, cfg, k, weights)
    calib = calibrate_plan(chosen, sels, cfg, cost, "sel", groups)
    scores, _ = plan_scores(chosen, sels, "sel", len(groups))
    exits = first_exit(scores, np.array(calib.thresholds))
    return float(
        cost.latencies([c.layer for c in chosen], [c.lookup_ms for c in chosen], exits).mean()
    )


def choose(
    cands: Sequence[ProbeCandidate],
    cfg: FitConfig,
    cost: CostModel,
    k: int,
    groups: np.ndarray,
    rows: SelectorRows,
    say: Callable[[str], None],
) -> list[ProbeCandidate]:
    """Optimizer, pruning, and a few rounds of agreeing with the calibration.

    Round 0 rates each candidate by its coverage at per-probe agreement A, which undervalues
    early probes: the cascade shares one error budget over all requests. Each later round
    calibrates lam for the last plan on the selector rows and rates every candidate by the share
    of rows it would answer at that lam (score > 1 - lam * s_k), then re-optimises. The plan of
    least expected latency on the selector rows wins.
    """
    by_key = {c.option_key: c for c in cands}
    best: tuple[float, list[ProbeCandidate]] = (cost.full_ms, [])
    coverage = {c.option_key: c.coverage for c in cands}
    seen: set[tuple[str, ...]] = set()
    for round_ in range(cfg.plan_rounds):
        plan = choose_plan(
            [replace(as_candidate(c, cost), coverage=coverage[c.option_key]) for c in cands],
            cost.full_ms,
            memory_budget=cfg.memory_budget_bytes,
            max_probes=cfg.max_probes,
            min_gain=cfg.plan_min_gain,
        )
        chosen = [by_key[f"{p.layer}:{p.variant}"] for p in plan.chosen]
        say(
            f"optimizer round {round_}: {[c.option_key for c in chosen]} "
            f"(model speedup {plan.speedup:.2f}x)"
        )
        if cfg.prune and chosen:
            chosen = prune(chosen, cands, cfg, cost, k, groups, rows, say)
        key = tuple(c.option_key for c in chosen)
        if not chosen or key in seen:
            break
        seen.add(key)
        expected = expected_ms(chosen, cfg, cost, k, groups, rows)
        if expected < best[0]:
            best = (expected, chosen)
        sels = plan_selectors(chosen, cfg, k, rows)
        lam = calibrate_plan(chosen, sels, cfg, cost, "sel", groups).lam
        for c in cands:
            s_k = savings([cost.time_to_cut(c.layer)], cost.full_ms)[0]
            coverage[c.option_key] = float((c.sel_score > 1.0 - lam * s_k).mean())
    return best[1]


def prune(
    chosen: list[ProbeCandidate],
    cands: Sequence[ProbeCandidate],
    cfg: FitConfig,
    cost: CostModel,
    k: int,
    groups: np.ndarray,
    weights: SelectorRows,
    say: Callable[[str], None],
) -> list[ProbeCandidate]:
    """Local search on the selector rows, with the cascade calibrated for real: drop a probe, or
    give it a cheaper selector option, one move at a time while that lowers expected latency.
    The optimizer's nested-coverage model cannot see the shared error budget, nor that a
    richer selector's extra hits may not pay for its memory lookup."""
    by_key = {c.option_key: c for c in cands}
    cheaper = {
        c.option_key: [
            by_key[f"{c.key}/{o}"]
            for o in SELECTOR_OPTIONS[: SELECTOR_OPTIONS.index(c.option)]
            if f"{c.key}/{o}" in by_key
        ]
        for c in cands
    }
    current = expected_ms(chosen, cfg, cost, k, groups, weights)
    while chosen:
        moves = [chosen[:i] + chosen[i + 1 :] for i in range(len(chosen)) if len(chosen) > 1]
        moves += [
            [*chosen[:i], alt, *chosen[i + 1 :]]
            for i, c in enumerate(chosen)
            for alt in cheaper[c.option_key]
        ]
        if not moves:
            break
        trials = [(expected_ms(m, cfg, cost, k, groups, weights), n) for n, m in enumerate(moves)]
        best, n = min(trials)
        if best >= current - 1e-6:
            break
        say(
            f"{[c.option_key for c in chosen]} -> {[c.option_key for c in moves[n]]}: "
            f"{current:.3f} -> {best:.3f} ms"
        )
        chosen, current = moves[n], best
    return chosen
