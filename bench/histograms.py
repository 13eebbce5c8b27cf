"""The inference service's lookup histograms, scraped before and after a workload.

`gati bench latency` reads what the service itself measured of each lookup (its cost on the
model's thread, the reply delay in ms and in stages) as p50 / p99 of the observations that
fell between two scrapes, interpolated within a bucket.
"""

from __future__ import annotations

import math

import numpy as np

from bench.stack import Stack
from services.inference.metrics import LOOKUP_COST_BUCKETS, LOOKUP_RTT_BUCKETS, STAGE_BUCKETS

HISTOGRAMS = {
    "lookup_cost_ms": ("gati_cache_lookup_cost_seconds_bucket", LOOKUP_COST_BUCKETS, 1e3),
    "reply_ms": ("gati_cache_lookup_rtt_seconds_bucket", LOOKUP_RTT_BUCKETS, 1e3),
    "reply_stages": ("gati_cache_lookup_reply_stages_bucket", STAGE_BUCKETS, 1.0),
}


def scrape(stack: Stack) -> dict[str, np.ndarray]:
    """Cumulative bucket counts of each histogram in HISTOGRAMS, summed over labels."""
    out = {}
    for key, (name, bounds, _) in HISTOGRAMS.items():
        counts = dict.fromkeys(map(_le, (*bounds, math.inf)), 0.0)
        for labels, value in stack.samples("inference", name):
            if labels.get("le") in counts:
                counts[labels["le"]] += value
        out[key] = np.array(list(counts.values()))
    return out


def quantiles(bounds: tuple[float, ...], before: np.ndarray, after: np.ndarray) -> dict:
    """p50 and p99 (linear within a bucket) and count of the observations between scrapes."""
    counts = after - before
    n = float(counts[-1])
    if n == 0:
        return {"n": 0, "p50": None, "p99": None}
    edges = (*bounds, math.inf)
    out: dict = {"n": int(n)}
    for name, q in (("p50", 0.5), ("p99", 0.99)):
        i = int(np.searchsorted(counts, q * n))
        lo, lo_count = (edges[i - 1], counts[i - 1]) if i else (0.0, 0.0)
        hi = edges[i]
        frac = (q * n - lo_count) / max(counts[i] - lo_count, 1.0)
        out[name] = lo + frac * (hi - lo) if hi != math.inf else lo
    return out


def _le(bound: float) -> str:
    return "+Inf" if bound == math.inf else repr(float(bound))


def lookup_figures(before: dict[str, np.ndarray], after: dict[str, np.ndarray]) -> dict:
    """p50 / p99 (in ms, or stages) and count of each histogram between two scrapes."""
    out = {}
    for key, (_, bounds, scale) in HISTOGRAMS.items():
        q = quantiles(bounds, before[key], after[key])
        out[key] = {
            "n": q["n"],
            **{p: (q[p] * scale if q[p] is not None else None) for p in ("p50", "p99")},
        }
    return out
