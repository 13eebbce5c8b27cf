"""Thresholds for the whole cascade: served agreement with the base model >= A.

The errors of all exits add up, so thresholds are chosen together. They come from a
one-parameter family: t_k(lam) = 1 - lam * s_k, where s_k is the share of the full latency a hit
at plan position k saves. It is the Lagrangian answer to "maximise time saved subject to an
error budget" when a selector's score estimates P(probe answer == base answer): accept a
request at k when its expected saving outweighs lam-weighted expected error. lam = 0 closes every
probe; growing lam opens early probes fastest.

Two ways to pick lam on calibration data, scanning from strict to loose (fixed-sequence):
- `empirical`: the loosest lam before the first one whose agreement falls below A + margin.
- `ltt` (Learn then Test, Angelopoulos et al. 2021): at each lam, test H0: risk(lam) > 1 - A
  and keep going while p <= delta, stop at the first failure. When every unit's loss is 0 or 1
  (one request per unit) the test is the exact binomial one, P(Bin(n, 1 - A) <= errors);
  otherwise (a unit's loss is a share in [0, 1]) the Hoeffding-Bentkus bound, which pays a
  factor e for allowing any bounded loss (1200 units at A = 0.99, delta = 0.1: 7 errors
  allowed against 5).
  Fixed-sequence testing controls the family-wise error at delta with no monotonicity
  assumption, so: P(risk(chosen lam) <= 1 - A) >= 1 - delta, over the draw of the calibration
  set, when calibration units and future units are exchangeable.
A *unit* is a group (an image, or a neighbourhood) when groups are given: the loss of a unit is
its share of wrongly served requests, in [0, 1], and the controlled risk is the mean of that
over units; errors correlated within an image then cannot fake a large sample. With one
request per group this is the request-level disagreement rate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MODES = ("empirical", "ltt")


def first_exit(scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """scores [n, L], thresholds [L] -> exit position [n] (-1: no probe hit)."""
    if scores.shape[1] == 0:
        return np.full(scores.shape[0], -1)
    hits = scores > thresholds[None, :]
    pos = hits.argmax(axis=1)
    return np.where(hits.any(axis=1), pos, -1)


def cascade_errors(exit_pos: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """[n] bool: served answer differs from the base answer (only possible on a hit)."""
    if correct.shape[1] == 0:
        return np.zeros(len(exit_pos), bool)
    rows = np.arange(len(exit_pos))
    return (exit_pos >= 0) & ~correct[rows, np.maximum(exit_pos, 0)]


def group_losses(errors: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
    """Per-unit loss in [0, 1]: each group's share of errors (each request alone if None)."""
    if groups is None:
        return errors.astype(np.float64)
    _, inv, counts = np.unique(groups, return_inverse=True, return_counts=True)
    return np.bincount(inv, weights=errors.astype(np.float64)) / counts


def _log_binom_cdfs(kmax: int, n: int, p: float) -> np.ndarray:
    """[kmax + 1]: log P(Binomial(n, p) <= k) for k = 0..kmax, in log space (no scipy)."""
    kmax = min(kmax, n)
    j = np.arange(kmax, dtype=np.float64)
    # log pmf(j+1) - log pmf(j) = log((n - j) / (j + 1)) + log(p / (1 - p))
    steps = np.log((n - j) / (j + 1)) + math.log(p / (1 - p))
    log_pmf = n * math.log1p(-p) + np.concatenate([[0.0], np.cumsum(steps)])
    return np.logaddexp.accumulate(log_pmf)


def hb_p_values(risk_hat: np.ndarray, n: int, alpha: float) -> np.ndarray:
    """Hoeffding-Bentkus p-values for H0: E[loss] > alpha, losses in [0, 1], n units, one per
    observed mean risk (Bates et al. 2021, "Distribution-free, risk-controlling prediction
    sets"): min(exp(-n h(r, alpha)), e * P(Bin(n, alpha) <= ceil(n r))), 1 when r >= alpha."""
    r = np.atleast_1d(np.asarray(risk_hat, dtype=np.float64))
    out = np.ones_like(r)
    if n <= 0:
        return out
    below = r < alpha
    a = np.clip(r[below], 0.0, alpha)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = np.where(a > 0, a * np.log(a / alpha), 0.0) + (1 - a) * np.log((1 - a) / (1 - alpha))
    k = np.ceil(n * r[below] - 1e-9).astype(np.int64)
    log_cdf = _log_binom_cdfs(int(k.max()) if len(k) else 0, n, alpha)
    bentkus = math.e * np.exp(log_cdf[np.minimum(k, len(log_cdf) - 1)])
    out[below] = np.minimum(np.minimum(np.exp(-n * h), bentkus), 1.0)
    return out


def binomial_p_values(risk_hat: np.ndarray, n: int, alpha: float) -> np.ndarray:
    """Exact p-values for H0: P(loss = 1) > alpha when every loss is 0 or 1, one per observed
    mean risk: P(Binomial(n, alpha) <= n r)."""
    r = np.atleast_1d(np.asarray(risk_hat, dtype=np.float64))
    if n <= 0:
        return np.ones_like(r)
    k = np.rint(n * r).astype(np.int64)
    log_cdf = _log_binom_cdfs(int(k.max()) if len(k) else 0, n, alpha)
    return np.minimum(np.exp(log_cdf[np.minimum(k, len(log_cdf) - 1)]), 1.0)


def hb_p_value(risk_hat: float, n: int, alpha: float) -> float:
    """`hb_p_values` for one observed risk."""
    return float(hb_p_values(np.array([risk_hat]), n, alpha)[0])


def _risk_curves(
    scores: np.ndarray,
    correct: np.ndarray,
    s: np.ndarray,
    grid: np.ndarray,
    groups: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Disagreement rate per request and mean unit loss, at every lam of `grid` at once.

    A row hits at position k once lam > (1 - score) / s_k, so one comparison per (lam, row, k)
    replaces a cascade simulation per lam.
    """
    n = len(scores)
    row_risk, unit_risk = np.zeros(len(grid)), np.zeros(len(grid))
    if len(grid) == 0:
        return row_risk, unit_risk
    opens = (1.0 - scores) / s[None, :]  # [n, L]
    wrong = ~correct  # [n, L]
    if groups is not None:
        order = np.argsort(groups, kind="stable")
        _, starts, counts = np.unique(groups[order], return_index=True, return_counts=True)
    block = max(1, min(len(grid), (1 << 22) // max(n, 1)))
    for b in range(0, len(grid), block):
        lam = grid[b : b + block, None]  # [B, 1]
        err = np.zeros((len(lam), n), bool)  # [B, n]
        decided = np.zeros((len(lam), n), bool)
        for k in range(opens.shape[1]):  # a row leaves at the first position that is open
            hit = lam > opens[None, :, k]
            err |= hit & ~decided & wrong[None, :, k]
            decided |= hit
        row_risk[b : b + block] = err.mean(axis=1)
        if groups is None:
            unit_risk[b : b + block] = row_risk[b : b + block]
        else:
            per_group = np.add.reduceat(err[:, order], starts, axis=1) / counts  # [B, groups]
            unit_risk[b : b + block] = per_group.mean(axis=1)
    return row_risk, unit_risk


def savings(time_to_cut_ms: Sequence[float], full_ms: float) -> np.ndarray:
    """s_k in (0, 1]: share of the full latency a hit at each plan position saves."""
    s = 1.0 - np.asarray(time_to_cut_ms, dtype=np.float64) / full_ms
    return np.clip(s, 1e-3, 1.0)


def thresholds_for(lam: float, s: np.ndarray) -> np.ndarray:
    return np.clip(1.0 - lam * s, 0.0, 1.0)


def lambda_grid(s: np.ndarray, points: int = 400) -> np.ndarray:
    """Strict to loose: from 1e-4 up to where the latest probe's threshold reaches 0."""
    top = 1.0 / float(s.min()) if len(s) else 1.0
    return np.geomspace(1e-4, top, points)


@dataclass(frozen=True)
class Calibration:
    mode: str
    lam: float  # 0 = every probe closed
    thresholds: tuple[float, ...]  # per plan position
    target: float  # agreement A
    delta: float | None  # ltt: allowed probability of missing the target
    margin: float  # empirical: calibrated to A + margin
    units: int  # calibration units (groups, or requests)
    requests: int
    agreement: float  # on the calibration requests, at lam
    hit_rate: float
    p_value: float | None  # ltt: at lam

    def report(self) -> dict[str, object]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def calibrate_cascade(
    scores: np.ndarray,
    correct: np.ndarray,
    s: np.ndarray,
    *,
    target: float,
    mode: str = "empirical",
    delta: float = 0.1,
    margin: float = 0.0,
    groups: np.ndarray | None = None,
    points: int = 400,
) -> Calibration:
    """Pick lam for plan scores [n, L] and correctness [n, L] (probe answer == base answer)."""
    if mode not in MODES:
        raise ValueError(f"unknown calibration mode {mode!r}; valid: {', '.join(MODES)}")
    if not 0.0 < target < 1.0:
        raise ValueError(f"target agreement must be within (0, 1), got {target}")
    n, num_layers = scores.shape
    alpha = 1.0 - target
    best_lam, best_p = 0.0, None
    units = len(np.unique(groups)) if groups is not None else n
    grid = lambda_grid(s, points) if num_layers and n else np.zeros(0)
    row_risk, unit_risk = _risk_curves(scores, correct, s, grid, groups)
    p_values = None
    if mode == "ltt":
        test = binomial_p_values if units == n else hb_p_values  # 0/1 losses: exact test
        p_values = test(unit_risk, units, alpha)
    for i, lam in enumerate(grid):
        if p_values is None:
            if 1.0 - row_risk[i] < target + margin:
                break
        else:
            if p_values[i] > delta:
                break
            best_p = float(p_values[i])
        best_lam = float(lam)
    thr = thresholds_for(best_lam, s) if num_layers else np.zeros(0)
    exits = first_exit(scores, thr)
    errors = cascade_errors(exits, correct)
    return Calibration(
        mode=mode,
        lam=best_lam,
        thresholds=tuple(float(t) for t in thr),
        target=target,
        delta=delta if mode == "ltt" else None,
        margin=margin if mode == "empirical" else 0.0,
        units=units,
        requests=n,
        agreement=float(1.0 - errors.mean()) if n else 1.0,
        hit_rate=float((exits >= 0).mean()) if n else 0.0,
        p_value=best_p,
    )


def coverage_at_precision(
    score: np.ndarray, correct: np.ndarray, precision: float
) -> tuple[float, float]:
    """(largest share of rows one probe can answer with agreement >= precision among its hits,
    the threshold doing it). Used to rank candidates before the plan exists."""
    if len(score) == 0:
        return 0.0, 1.0
    order = np.argsort(-score, kind="stable")
    cum_ok = np.cumsum(correct[order])
    k = np.arange(1, len(score) + 1)
    ok = cum_ok >= precision * k
    # answer only at score boundaries (ties share a threshold)
    sorted_s = score[order]
    boundary = np.append(sorted_s[1:] < sorted_s[:-1], True)
    valid = np.flatnonzero(ok & boundary)
    if len(valid) == 0:
        return 0.0, 1.0
    last = int(valid[-1])
    nxt = float(sorted_s[last + 1]) if last + 1 < len(sorted_s) else 0.0
    return (last + 1) / len(score), nxt
