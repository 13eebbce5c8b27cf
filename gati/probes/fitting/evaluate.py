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

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Self, TypeVar

import numpy as np

from gati.probes.fitting.costs import CostModel, measure_ms
from gati.probes.fitting.rows import SOURCE
from gati.probes.serving.bundle import Bundle
from gati.probes.serving.reductions import refine
from gati.probes.serving.runtime import ProbeRuntime
from gati.probes.serving.variants import Predictor


@dataclass(frozen=True)
class Stats:
    """What the cascade did on some requests (None where there were none, or no labels)."""

    requests: int
    agreement: float | None
    hit_rate: float | None
    top1: float | None
    expected_ms: float | None
    speedup_expected: float | None

    @classmethod
    def of(
        cls,
        served: np.ndarray,
        base: np.ndarray,
        exits: np.ndarray,
        lat: np.ndarray,
        full_model_ms: float,
        labels: np.ndarray | None,
        **extra: Any,
    ) -> Self:
        n = len(served)
        return cls(
            requests=int(n),
            agreement=float((served == base).mean()) if n else None,
            hit_rate=float((exits >= 0).mean()) if n else None,
            top1=float((served == labels).mean()) if labels is not None and n else None,
            expected_ms=float(lat.mean()) if n else None,
            speedup_expected=float(full_model_ms / lat.mean()) if n else None,
            **extra,
        )


S = TypeVar("S", bound=Stats)


@dataclass(frozen=True)
class Seen:
    """The requests whose image the fitting window held, and the others."""

    seen: Stats
    unseen: Stats

    def by_name(self) -> tuple[tuple[str, Stats], ...]:
        return (("seen", self.seen), ("unseen", self.unseen))


@dataclass(frozen=True)
class Cascade(Stats):
    """Over every request, with the base model's own top-1 and the worst full window."""

    base_top1: float | None
    full_ms: float
    worst_window_agreement: float | None


@dataclass(frozen=True)
class Window(Stats):
    start: int  # first request of the window


@dataclass(frozen=True)
class LayerReport:
    """One active probe: how often it answered, how well, at what cost."""

    layer: str
    variant: str
    reduction: str
    selector: str | None
    threshold: float | None
    hit_rate: float
    agreement_among_hits: float | None
    probe_agreement: float | None  # the probe alone, on every request
    lookup_ms: float
    param_bytes: int | None
    memory_bytes: int | None


@dataclass(frozen=True)
class CandidateReport:
    """One inactive probe the bundle carries, alone on every request."""

    layer: str
    variant: str
    probe_agreement: float
    lookup_ms: float | None
    param_bytes: int | None


@dataclass(frozen=True)
class Oracle:
    """Exit at the earliest cut whose probe agrees with the base model, no lookup cost."""

    speedup: float
    hit_rate: float
    over: str = "plan"
    speedup_all_candidates: float | None = None  # None: the bundle carries no candidates
    hit_rate_all_candidates: float | None = None


@dataclass(frozen=True)
class BundleSummary:
    """Which bundle was evaluated."""

    model: str
    version: int
    fingerprint: str
    checksum: str
    plan: tuple[str, ...]  # "layer:variant", stage order

    @classmethod
    def of(cls, bundle: Bundle) -> BundleSummary:
        plan = tuple(f"{e['layer']}:{e['variant']}" for e in bundle.layers)
        return cls(bundle.model_id, bundle.version, bundle.model_fingerprint, bundle.checksum, plan)


@dataclass(frozen=True)
class BundleReport:
    """What `evaluate_bundle` measured; `to_dict` is its JSON form."""

    bundle: BundleSummary
    cost_model: CostModel  # the costs assumed (its `describe()` in the JSON form)
    cascade: Cascade
    oracle: Oracle
    layers: tuple[LayerReport, ...]
    candidates: tuple[CandidateReport, ...]
    windows: tuple[Window, ...]
    seen: Seen | None = None  # when told which requests' images were seen

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["cost_model"] = self.cost_model.describe()
        out["oracle"] = {k: v for k, v in out["oracle"].items() if v is not None}
        out["windows"] = [{"start": w["start"], **w} for w in out["windows"]]
        if self.seen is None:
            del out["seen"]
        return out


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
) -> BundleReport:
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
    layer_rows: list[LayerReport] = []
    answers: list[tuple[str, np.ndarray]] = []  # (layer, each probe's own answer)
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
        answers.append((layer, alone))
        hits = exits == i
        layer_rows.append(
            LayerReport(
                layer=layer,
                variant=entry["variant"],
                reduction=red,
                selector=(entry.get("selector") or {}).get("kind"),
                threshold=entry.get("threshold"),
                hit_rate=float(hits.mean()) if n else 0.0,
                agreement_among_hits=float((served[hits] == base[hits]).mean())
                if hits.any()
                else None,
                probe_agreement=float((alone == base).mean()) if n else None,
                lookup_ms=ms,
                param_bytes=entry.get("param_bytes"),
                memory_bytes=entry.get("memory_bytes"),
            )
        )
    lat = cost.latencies([e["layer"] for e in bundle.layers], costs, exits)

    def stats(cls: type[S], rows: slice | np.ndarray, **extra: Any) -> S:
        truth = None if labels is None else labels[rows]
        return cls.of(
            served[rows], base[rows], exits[rows], lat[rows], cost.full_ms, truth, **extra
        )

    windows = tuple(
        stats(Window, slice(s, min(s + window, n)), start=s) for s in range(0, n, window)
    )
    full_windows = [w.agreement for w in windows if w.requests == window]
    cascade = stats(
        Cascade,
        slice(None),
        base_top1=float((base == labels).mean()) if labels is not None else None,
        full_ms=cost.full_ms,
        worst_window_agreement=min(full_windows) if full_windows else None,
    )
    candidates = _candidate_answers(bundle, acts)
    seen_stats = None
    if seen is not None:
        seen = np.asarray(seen, bool)
        seen_stats = Seen(stats(Stats, seen), stats(Stats, ~seen))
    return BundleReport(
        bundle=BundleSummary.of(bundle),
        cost_model=cost,
        cascade=cascade,
        oracle=_oracle(answers, candidates, base, cost),
        layers=tuple(layer_rows),
        candidates=tuple(_candidate_report(e, alone, base) for e, alone in candidates),
        windows=windows,
        seen=seen_stats,
    )


def _candidate_answers(
    bundle: Bundle, acts: Mapping[str, np.ndarray]
) -> list[tuple[dict[str, Any], np.ndarray]]:
    """Each inactive probe with its own answer on every request."""
    out = []
    for entry in bundle.candidates:
        ch = int(entry["channels"])
        x = refine(np.asarray(acts[entry["layer"]]), ch, SOURCE, entry["reduction"])
        predictor = Predictor(entry["variant"], ch, bundle.layer_tensors(entry))
        out.append((entry, predictor(x).argmax(axis=1)))
    return out


def _oracle(
    plan: list[tuple[str, np.ndarray]],
    candidates: list[tuple[dict[str, Any], np.ndarray]],
    base: np.ndarray,
    cost: CostModel,
) -> Oracle:
    """Earliest cut whose probe agrees with the base model, no lookup cost."""

    def speedup(answers: list[tuple[str, np.ndarray]]) -> tuple[float, float]:
        exit_ms = np.full(len(base), cost.full_ms)
        for layer, alone in sorted(answers, key=lambda a: -cost.position(a[0])):
            exit_ms = np.where(alone == base, cost.time_to_cut(layer), exit_ms)
        return float(cost.full_ms / exit_ms.mean()), float((exit_ms < cost.full_ms).mean())

    over_plan, hits_plan = speedup(plan)
    if not candidates:
        return Oracle(over_plan, hits_plan)
    over_all, hits_all = speedup(plan + [(entry["layer"], alone) for entry, alone in candidates])
    return Oracle(
        over_plan, hits_plan, speedup_all_candidates=over_all, hit_rate_all_candidates=hits_all
    )


def _candidate_report(
    entry: dict[str, Any], alone: np.ndarray, base: np.ndarray
) -> CandidateReport:
    return CandidateReport(
        layer=entry["layer"],
        variant=entry["variant"],
        probe_agreement=float((alone == base).mean()),
        lookup_ms=entry.get("lookup_cost_ms"),
        param_bytes=entry.get("param_bytes"),
    )
