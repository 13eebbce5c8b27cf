"""A fitted plan -> a sealed Bundle: active probes, optional candidates, and the fit report."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from gati.probes.fitting.calibration import Calibration
from gati.probes.fitting.candidates import ProbeCandidate
from gati.probes.fitting.costs import CostModel
from gati.probes.fitting.entries import active_prefix, candidate_prefix, layer_entry
from gati.probes.fitting.live_calibration import LiveCalibration
from gati.probes.fitting.selection import uses_memory
from gati.probes.fitting.splits import Split
from gati.probes.serving.bundle import Bundle
from gati.probes.serving.selectors import Selector

if TYPE_CHECKING:
    from gati.probes.fitting.fit_config import FitConfig


def assemble(
    chosen: Sequence[ProbeCandidate],
    selectors: Sequence[Selector],
    calib: Calibration,
    cands: Sequence[ProbeCandidate],
    cfg: FitConfig,
    cost: CostModel,
    split: Split,
    exits: np.ndarray,
    expected: float,
    *,
    model_id: str,
    arch: str,
    fingerprint: str,
    version: int,
    num_classes: int,
    live: Mapping[str, LiveCalibration] | None = None,
    keep_candidates: bool = False,
) -> Bundle:
    """`live`: layer -> calibrated live memory rule, shipped in that layer's entry;
    `keep_candidates`: ship every trained probe too (inactive)."""
    live = live or {}
    entries, tensors = [], {}
    for i, (c, sel) in enumerate(zip(chosen, selectors, strict=True)):
        hits = exits == i
        entry, t = layer_entry(
            c.layer,
            c.variant,
            c.channels,
            c.roles,
            prefix=active_prefix(c.layer),
            selector=sel,
            memory=c.memory if uses_memory(sel) else None,
            threshold=calib.thresholds[i],
            live=live[c.layer].rule if c.layer in live else None,
            extra={
                "calibration_size": len(split.threshold),
                "lookup_cost_ms": round(c.lookup_ms, 5),
                "time_to_cut_ms": round(cost.time_to_cut(c.layer), 5),
                "coverage_alone": round(c.coverage, 5),
                "selector_option": c.option,
                "hit_rate_calibration": round(float(hits.mean()), 5),
                "agreement_among_hits_calibration": (
                    round(float(c.thr.correct[hits].mean()), 5) if hits.any() else None
                ),
            },
        )
        entries.append(entry)
        tensors.update(t)
    candidates = []
    if keep_candidates:
        unique = {c.key: c for c in cands}  # one probe per (cut, variant), whatever the selector
        for c in unique.values():
            entry, t = layer_entry(
                c.layer,
                c.variant,
                c.channels,
                c.roles,
                prefix=candidate_prefix(c.layer, c.variant),
                extra={"agreement_calibration": round(float(c.thr.correct.mean()), 5)},
            )
            candidates.append(entry)
            tensors.update(t)
    report = {
        "config": cfg.report(),
        "split": split.sizes(),
        "calibration": calib.report(),
        "live": [live[c.layer].report() for c in chosen if c.layer in live],
        "cost_model": cost.describe(),
        "expected_ms_calibration": round(expected, 5),
        "speedup_calibration": round(cost.full_ms / expected, 4),
        "candidates": [
            {
                "layer": c.layer,
                "variant": c.variant,
                "selector": c.option,
                "coverage_alone": round(c.coverage, 5),
                "lookup_ms": round(c.lookup_ms, 5),
                "agreement_calibration": round(float(c.thr.correct.mean()), 5),
            }
            for c in cands
        ],
    }
    return Bundle.create(
        model_id=model_id,
        arch=arch,
        model_fingerprint=fingerprint,
        layers=entries,
        tensors=tensors,
        version=version,
        num_classes=num_classes,
        agreement_target=cfg.agreement_target,
        candidates=candidates,
        extra={"fit": report, "cuts": model_cuts(cost, [*chosen, *cands])},
    )


def model_cuts(cost: CostModel, probes: Sequence[ProbeCandidate]) -> list[dict[str, object]]:
    """The model's cut points in stage order, with the channels each probe was fitted to
    (null for a cut without records): the cache service checks every probe's width against
    them before serving it (gati.probes.serving.fitness)."""
    channels = {c.layer: int(c.channels) for c in probes}
    return [{"name": cut, "channels": channels.get(cut)} for cut in cost.cut_names]
