"""Selector options for one cut, and fitting one with cross-fitted coverage.

Options, cheapest first: calibrated confidence, plus class offsets, and the learned selector
with novelty features, gated by familiarity when the traffic recurs (see `selector_options`).
Coverage (the share of rows a selector answers at the agreement target) is scored out of fold,
by group, so that richer options do not win on in-sample fit.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from gati.probes.fitting.calibration import coverage_at_precision
from gati.probes.fitting.candidates import Evidence, SelectorRows
from gati.probes.serving.features import (
    NOVELTY_FEATURES,
    build_features,
    class_features,
    feature_names,
)
from gati.probes.serving.selectors import Selector, fit_logistic

if TYPE_CHECKING:
    from gati.probes.fitting.fit_config import FitConfig


SELECTOR_OPTIONS = ("conf", "conf+class", "full", "gated")
MIN_NOVEL = (20, 2)  # a familiarity gate needs this many stand-in rows, from this many groups
GATE_QUANTILE = 0.02  # gate: low quantile of new stand-ins' (log) nearest-neighbour distance,
# high quantile (1 - this) of recurring rows'; the gate sits midway when they leave a gap
CLASS_UNITS = 10  # per-class offsets need this many selector groups per class


def selector_options(cfg: FitConfig, rows: SelectorRows) -> list[str]:
    """Selector options per cut, cheapest first; with `auto` each is its own candidate for the
    optimizer, which weighs what it answers against what its lookup costs. Every option is a
    fitted logistic score: the cascade's threshold family assumes scores that estimate
    P(agree), and raw max-softmax is overconfident exactly where it errs ("max-softmax" is
    served as calibrated confidence: the same ranking on a probability scale).
    - conf: calibrated confidence; conf+class: plus per-class offsets (only with enough groups:
      with 30 images, class offsets memorise images);
    - full: every feature, novelty included;
    - gated: full, and a hard familiarity gate: never serve a request farther from the memory
      than new inputs lie (radius from the stand-ins for new inputs). Probes fine-tuned on
      recurring inputs are as confident on new ones, and the learned weights alone, fitted on
      a handful of new images, cannot be trusted to say no."""
    if cfg.selector == "max-softmax":
        return ["conf"]
    if cfg.selector == "logistic":
        return ["gated" if can_gate(cfg, rows) else "full"]
    out = ["conf"]
    if cfg.class_features and rows.units >= CLASS_UNITS * 10:
        out.append("conf+class")
    out.append("gated" if can_gate(cfg, rows) else "full")
    return out


def can_gate(cfg: FitConfig, rows: SelectorRows) -> bool:
    """Traffic recurs (selector rows whose image was also trained on) and there are enough
    stand-ins for new inputs to place a familiarity gate. Then the novelty selector is always
    gated: an ungated one was measured serving new images at 61-89% agreement after looking
    fine on the handful of new images in its selector rows. Without recurrence (uniform
    traffic: every request is new) a gate would close everything, so none is placed."""
    return (
        cfg.uses_novelty
        and int(rows.novel.sum()) >= MIN_NOVEL[0]
        and rows.novel_groups >= MIN_NOVEL[1]
        and int((~rows.novel).sum()) >= MIN_NOVEL[0]
    )


def option_names(
    cfg: FitConfig, k: int, option: str, rows: SelectorRows, *, prev: bool
) -> tuple[str, ...]:
    if option == "conf":
        return ("conf", "conf_logit")
    if option == "conf+class":
        return ("conf", "conf_logit", *class_features(k))
    classes = cfg.class_features and rows.units >= CLASS_UNITS * k
    return feature_names(k, prev=prev, novelty=cfg.uses_novelty, classes=classes)


def familiarity_gate(recurring: np.ndarray, novel: np.ndarray) -> float:
    """Log-distance below which a request counts as familiar. New inputs' distances vary from
    image to image and only a few new images are in a window, so the gate is not put at their
    edge but midway between the recurring rows' high quantile and the new ones' low quantile
    (in log distance), or at the latter when the two overlap."""
    far = float(np.quantile(novel, GATE_QUANTILE))
    near = float(np.quantile(recurring, 1.0 - GATE_QUANTILE)) if len(recurring) else far
    return 0.5 * (near + far) if near < far else far


def fit_selector(
    cfg: FitConfig,
    k: int,
    part: Evidence,
    prev: tuple[np.ndarray, np.ndarray] | None,
    rows: SelectorRows,
    option: str,
    *,
    coverage: bool = True,
) -> tuple[Selector, float, np.ndarray]:
    """(selector of `option`, the share of `part` it answers at the target agreement, its
    out-of-fold scores [n]): comparing options in-sample would favour the richest one."""
    pl, pc = prev if prev is not None else (None, None)
    names = option_names(cfg, k, option, rows, prev=prev is not None)
    feats = build_features(names, part.out, prev_label=pl, prev_conf=pc, novelty=part.novelty)
    use = np.ones(len(feats), bool)
    gate = None
    if option == "gated":
        logdist = feats[:, names.index("nn_logdist")]
        gate = familiarity_gate(logdist[~rows.novel], logdist[rows.novel])
        use = logdist < gate  # the gated selector is fitted where it may serve
        if use.sum() < MIN_NOVEL[0]:
            use[:] = True
    sel = fit_logistic(
        feats[use], part.correct[use], names, weights=rows.weights[use], units=rows.units
    )
    sel = replace(sel, gate=gate)
    if not coverage:
        return sel, float("nan"), np.zeros(0, np.float32)
    score = np.zeros(len(part.correct), np.float32)
    for f in np.unique(rows.folds):
        held = rows.folds == f
        if held.all():  # a single group: nothing to cross-fit with
            score = sel.score(feats)
            break
        fit_rows = ~held & use
        if fit_rows.sum() < 2:
            fit_rows = ~held
        fitted = fit_logistic(
            feats[fit_rows],
            part.correct[fit_rows],
            names,
            weights=rows.weights[fit_rows],
            units=rows.units,
        )
        score[held] = replace(fitted, gate=gate).score(feats[held])
    return sel, coverage_at_precision(score, part.correct, cfg.agreement_target)[0], score


def uses_memory(sel: Selector) -> bool:
    return any(f in NOVELTY_FEATURES for f in sel.features)
