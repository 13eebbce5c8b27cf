"""evaluate_bundle: serve records through a bundle's cascade and measure what it would do.

Rows go through `ProbeRuntime.lookup` exactly as the cache service runs it: stage order, each
row carrying its `RowState`, a row leaving at its first hit. Reported:
- cascade: agreement with the base model, top-1 against ground truth (when labels are given),
  hit rate, expected latency and speedup under a stated cost model;
- oracle: exit at the earliest cut whose probe agrees with the base model (no lookup cost):
  the ceiling a perfect selector would reach with these probes (over the plan, and over every
  candidate probe when the bundle carries them);
- per layer: hit rate, agreement among hits, the probe's agreement alone, cost, memory;
- per window of `window` requests: agreement, hit rate, speedup (errors correlate by image,
  so a target met on average can fail in a window).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from gati.probes.fitting.costs import CostModel, measure_ms
from gati.probes.serving.bundle import Bundle
from gati.probes.serving.reductions import refine
from gati.probes.serving.runtime import ProbeRuntime
from gati.probes.serving.variants import Predictor

SOURCE = "pool4"


def _stats(
    served: np.ndarray,
    base: np.ndarray,
    exits: np.ndarray,
    lat: np.ndarray,
    full_ms: float,
    labels: np.ndarray | None,
) -> dict[str, float | int | None]:
    n = len(served)
    return {
        "requests": int(n),
        "agreement": float((served == base).mean()) if n else None,
        "hit_rate": float((exits >= 0).mean()) if n else None,
        "top1": float((served == labels).mean()) if labels is not None and n else None,
        "expected_ms": float(lat.mean()) if n else None,
        "speedup_expected": float(full_ms / lat.mean()) if n else None,
    }


def evaluate_bundle(
    bundle: Bundle,
    acts: Mapping[str, np.ndarray],
    base_logits: np.ndarray,
    *,
    cost: CostModel,
    labels: np.ndarray | None = None,
    seen: np.ndarray | None = None,
    window: int = 1000,
    lookup_ms: Mapping[str, float] | None = None,
    measure: bool = False,
) -> dict[str, Any]:
    """acts: cut -> [N, C*16] pool4 records; base_logits [N, K]; labels [N] ground truth;
    seen [N] bool: the request's image was in the fitting window (reported separately).
    Lookup costs: `lookup_ms` (cut -> ms), else measured here when `measure`, else the
    bundle's own measurement."""
    rt = ProbeRuntime(bundle)
    base = np.asarray(base_logits).argmax(axis=1)
    n = len(base)
    served = base.copy()
    exits = np.full(n, -1)
    remaining = np.arange(n)
    states = [rt.new_state() for _ in range(n)]
    layer_rows = []
    costs = []
    for i, entry in enumerate(bundle.layers):
        layer, red, ch = entry["layer"], entry["reduction"], int(entry["channels"])
        x_all = refine(np.asarray(acts[layer]), ch, SOURCE, red)  # [N, D]
        if len(remaining):
            hit, label, _ = rt.lookup(layer, x_all[remaining], [states[r] for r in remaining])
            rows = remaining[hit]
            served[rows], exits[rows] = label[hit], i
            remaining = remaining[~hit]
        if lookup_ms is not None and layer in lookup_ms:
            ms = float(lookup_ms[layer])
        elif measure:
            one = x_all[:1]
            ms = measure_ms(lambda one=one, layer=layer: rt.lookup(layer, one, [rt.new_state()]))
        else:
            ms = float(entry.get("lookup_cost_ms", 0.0))
        costs.append(ms)
        alone = Predictor(entry["variant"], ch, bundle.layer_tensors(entry))(x_all).argmax(axis=1)
        hits = exits == i
        layer_rows.append(
            {
                "layer": layer,
                "variant": entry["variant"],
                "reduction": red,
                "selector": (entry.get("selector") or {}).get("kind"),
                "threshold": entry.get("threshold"),
                "hit_rate": float(hits.mean()) if n else 0.0,
                "agreement_among_hits": float((served[hits] == base[hits]).mean())
                if hits.any()
                else None,
                "probe_agreement": float((alone == base).mean()) if n else None,
                "lookup_ms": ms,
                "param_bytes": entry.get("param_bytes"),
                "memory_bytes": entry.get("memory_bytes"),
                "_alone": alone,
            }
        )
    layers = [e["layer"] for e in bundle.layers]
    lat = cost.latencies(layers, costs, exits)
    out: dict[str, Any] = {
        "bundle": {
            "model": bundle.model_id,
            "version": bundle.version,
            "fingerprint": bundle.model_fingerprint,
            "checksum": bundle.checksum,
            "plan": [f"{e['layer']}:{e['variant']}" for e in bundle.layers],
        },
        "cost_model": cost.describe(),
        "cascade": _stats(served, base, exits, lat, cost.full_ms, labels),
    }
    out["cascade"]["base_top1"] = float((base == labels).mean()) if labels is not None else None
    out["cascade"]["full_ms"] = cost.full_ms
    out["oracle"] = _oracle(layer_rows, bundle, acts, base, cost)
    out["layers"] = [{k: v for k, v in r.items() if k != "_alone"} for r in layer_rows]
    out["candidates"] = _candidates(bundle, acts, base)
    windows = []
    for start in range(0, n, window):
        sl = slice(start, min(start + window, n))
        w = _stats(
            served[sl],
            base[sl],
            exits[sl],
            lat[sl],
            cost.full_ms,
            None if labels is None else labels[sl],
        )
        windows.append({"start": start, **w})
    out["windows"] = windows
    full_windows = [w["agreement"] for w in windows if w["requests"] == window]
    out["cascade"]["worst_window_agreement"] = min(full_windows) if full_windows else None
    if seen is not None:
        seen = np.asarray(seen, bool)
        out["seen"] = {
            name: _stats(
                served[m],
                base[m],
                exits[m],
                lat[m],
                cost.full_ms,
                None if labels is None else labels[m],
            )
            for name, m in (("seen", seen), ("unseen", ~seen))
        }
    return out


def _oracle(
    layer_rows: list[dict[str, Any]],
    bundle: Bundle,
    acts: Mapping[str, np.ndarray],
    base: np.ndarray,
    cost: CostModel,
) -> dict[str, Any]:
    """Earliest cut whose probe agrees with the base model, no lookup cost."""

    def speedup(answers: list[tuple[str, np.ndarray]]) -> tuple[float, float]:
        exit_ms = np.full(len(base), cost.full_ms)
        for layer, alone in sorted(answers, key=lambda a: -cost.position(a[0])):
            exit_ms = np.where(alone == base, cost.time_to_cut(layer), exit_ms)
        return float(cost.full_ms / exit_ms.mean()), float((exit_ms < cost.full_ms).mean())

    plan_speedup, plan_hits = speedup([(r["layer"], r["_alone"]) for r in layer_rows])
    out: dict[str, Any] = {"speedup": plan_speedup, "hit_rate": plan_hits, "over": "plan"}
    if bundle.candidates:
        answers = [(r["layer"], r["_alone"]) for r in layer_rows]
        for entry in bundle.candidates:
            ch = int(entry["channels"])
            x = refine(np.asarray(acts[entry["layer"]]), ch, SOURCE, entry["reduction"])
            answers.append(
                (
                    entry["layer"],
                    Predictor(entry["variant"], ch, bundle.layer_tensors(entry))(x).argmax(1),
                )
            )
        out["speedup_all_candidates"], out["hit_rate_all_candidates"] = speedup(answers)
    return out


def _candidates(bundle: Bundle, acts: Mapping[str, np.ndarray], base: np.ndarray) -> list[dict]:
    rows = []
    for entry in bundle.candidates:
        ch = int(entry["channels"])
        x = refine(np.asarray(acts[entry["layer"]]), ch, SOURCE, entry["reduction"])
        alone = Predictor(entry["variant"], ch, bundle.layer_tensors(entry))(x).argmax(axis=1)
        rows.append(
            {
                "layer": entry["layer"],
                "variant": entry["variant"],
                "probe_agreement": float((alone == base).mean()),
                "lookup_ms": entry.get("lookup_cost_ms"),
                "param_bytes": entry.get("param_bytes"),
            }
        )
    return rows
