"""Calibrate the live memory's rule (`gati.probes.serving.live.LiveRule`) on the fit's own rows.

Why: the cache service will remember recent requests under the base model's label and answer
a recurrence from its k nearest remembered rows. How close is close enough is a property of
the model, the cut and the traffic, so the fit measures it: it replays the window *in stream
order* through a `LiveMemory` exactly as the service will fill it (the `live_capacity` rows
before each row, every row filed under its base label), records each row's k-th nearest
distance and the neighbours' unanimous label, and picks the radius.

The radius (per active layer; `choose_radius`): candidate radii are the distinct k-th
distances of the rows with a unanimous label (at most `RADII` quantiles of them). At radius r
the rule answers the unanimous rows with dist_k <= r; its loss on a unit is the share of the
unit's answered rows whose label is not the row's base label, and its risk the mean of that
over units. A unit is a group (image or neighbourhood id) when the fit has groups, so errors
correlated within one image count once; otherwise a row. A radius needs at least
`MIN_SUPPORT` units answered, and then (the radius is the largest that passes)
- `empirical` fits: 1 - risk >= target + margin;
- `ltt` fits: the one-sided bound of `fitting.calibration` at the fit's delta: the test of
  H0: risk > 1 - target (exact binomial, i.e. Clopper-Pearson, with one row per unit;
  Hoeffding-Bentkus when units hold several rows) rejects at delta. That is a bound per
  radius; taking the largest passing radius is not corrected for the scan (a fixed-sequence
  scan from strict to loose, which would be, stopped at the first small-support fluctuation
  on instance-locality and certified nothing at layers where most radii pass).
No radius qualifies: radius 0, the rule is off. Limits: the replay ignores the service's ttl
(the fit has no clock) and assumes every request reaches the layer and is remembered; rows
that only train probes (augmented copies, --distil-data) are replayed where the fit put them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from gati.probes.fitting.calibration import binomial_p_values, group_losses, hb_p_value
from gati.probes.serving.features import memory_reduction
from gati.probes.serving.live import NO_LABEL, LiveMemory, LiveRule, standardisation
from gati.probes.serving.variants import spec

if TYPE_CHECKING:
    from gati.probes.fitting.candidates import ProbeCandidate
    from gati.probes.fitting.fit_config import FitConfig

MIN_SUPPORT = 30  # units answered before a radius's agreement counts: fewer is one lucky streak
RADII = 256  # candidate radii scanned (quantiles of the unanimous rows' k-th distances)


@dataclass(frozen=True)
class LiveCalibration:
    """One layer's calibrated rule and what it did on the replayed window."""

    layer: str
    rule: LiveRule
    capacity: int
    rows: int  # rows replayed
    answered: int  # rows the rule answers at its radius
    units: int  # groups among them (rows when the fit has no groups)
    agreement: float | None  # mean over those units of their share answered right
    p_value: float | None  # ltt: the test's p-value at the radius

    @property
    def share(self) -> float:
        return self.answered / self.rows if self.rows else 0.0

    def report(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            **self.rule.manifest(),
            "capacity": self.capacity,
            "rows": self.rows,
            "answered": self.answered,
            "units": self.units,
            "share": round(self.share, 5),
            "agreement": round(self.agreement, 5) if self.agreement is not None else None,
            "p_value": self.p_value,
        }


def replay(
    rule: LiveRule, x: np.ndarray, source: str, labels: np.ndarray, capacity: int
) -> tuple[np.ndarray, np.ndarray]:
    """(dist_k [n], unanimous label or NO_LABEL [n]): row i queried against a `LiveMemory`
    holding the up-to-`capacity` rows before it (labels [n]: their base labels)."""
    keys = rule.keys(x, source)
    n = len(keys)
    memory = LiveMemory(rule.dim, capacity, ttl_s=float(n + 1))  # the clock is the row index
    dist = np.full(n, np.inf, np.float32)
    label = np.full(n, NO_LABEL, np.int64)
    for i in range(n):
        d, lab = memory.query(keys[i : i + 1], rule.k, now=float(i))
        dist[i], label[i] = d[0], lab[0]
        memory.add(keys[i : i + 1], labels[i : i + 1], now=float(i))
    return dist, label


def choose_radius(
    dist: np.ndarray,
    label: np.ndarray,
    base_label: np.ndarray,
    groups: np.ndarray | None,
    cfg: FitConfig,
) -> tuple[float, int, int, float | None, float | None]:
    """(radius, rows answered, units, unit agreement, p-value) by the module's rule."""
    cand = (label != NO_LABEL) & np.isfinite(dist)
    d, wrong = dist[cand], label[cand] != base_label[cand]
    g = np.arange(len(d)) if groups is None else np.asarray(groups)[cand]
    radii = np.unique(d)
    if len(radii) > RADII:
        radii = np.unique(np.quantile(d, np.linspace(0.0, 1.0, RADII), method="lower"))
    alpha, ltt = 1.0 - cfg.agreement_target, cfg.calibration == "ltt"
    best: tuple[float, int, int, float | None, float | None] = (0.0, 0, 0, None, None)
    for r in radii:
        hit = d <= r
        losses = group_losses(wrong[hit], g[hit])
        units = len(losses)
        if units < MIN_SUPPORT:
            continue  # too few units to say anything
        risk = float(losses.mean())
        p = None
        if ltt:
            one_each = units == int(hit.sum())
            p = (
                float(binomial_p_values(np.array([risk]), units, alpha)[0])
                if one_each
                else hb_p_value(risk, units, alpha)
            )
            if p > cfg.delta:
                continue
        elif 1.0 - risk < cfg.agreement_target + cfg.margin:
            continue
        # a radius of exactly 0 (exact duplicates) would read "off": keep the smallest above
        radius = float(r) if r > 0 else float(np.nextafter(np.float32(0), np.float32(1)))
        best = (radius, int(hit.sum()), units, 1.0 - risk, p)
    return best


def calibrate_layer(
    layer: str,
    x: np.ndarray,
    channels: int,
    source: str,
    probe_reduction: str,
    base_label: np.ndarray,
    train_rows: np.ndarray,
    groups: np.ndarray | None,
    cfg: FitConfig,
) -> LiveCalibration:
    """The rule for one layer: keys at `cfg.live_reduction` (coarsened to the probe's grid if
    finer, since a lookup carries only the probe's input), standardised on the training rows,
    radius from replaying every row x [N, C*Gs*Gs] (grid `source`) in order."""
    red = memory_reduction(probe_reduction, cfg.live_reduction)
    mu, scale = standardisation(x[train_rows], channels, source, red)
    rule = LiveRule(red, channels, cfg.live_k, 0.0, mu, scale)
    dist, label = replay(rule, x, source, base_label, cfg.live_capacity)
    radius, answered, units, agreement, p = choose_radius(dist, label, base_label, groups, cfg)
    return LiveCalibration(
        layer,
        replace(rule, radius=radius),
        cfg.live_capacity,
        len(x),
        answered,
        units,
        agreement,
        p,
    )


def calibrate_live(
    chosen: Sequence[ProbeCandidate],
    acts: Mapping[str, np.ndarray],
    source: str,
    base_label: np.ndarray,
    train_rows: np.ndarray,
    groups: np.ndarray | None,
    cfg: FitConfig,
    log: Callable[[str], None],
) -> dict[str, LiveCalibration]:
    """Layer -> calibrated rule, for every active layer of the plan (one log line each)."""
    out: dict[str, LiveCalibration] = {}
    for c in chosen:
        red = spec(c.variant).reduction
        x = acts[c.layer]
        cal = calibrate_layer(
            c.layer, x, c.channels, source, red, base_label, train_rows, groups, cfg
        )
        out[c.layer] = cal
        agree = f"{cal.agreement:.4f}" if cal.agreement is not None else "-"
        log(
            f"live memory {c.layer}: radius {cal.rule.radius:.4g} ({cal.rule.reduction}, "
            f"k={cal.rule.k}), support {cal.answered} rows / {cal.units} units, "
            f"agreement {agree}, answers {cal.share:.1%} of {cal.rows} rows"
        )
    return out
