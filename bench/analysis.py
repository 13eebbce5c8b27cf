"""The report's figures from per-request arrays: pure functions, tested without a server.

One `Requests` is one system answering one workload's stream, in stream order. Agreement is
with the base model's own answer for the same request (computed in-process beforehand),
top-1 with the ground truth. Every ratio pairs the same requests: the stream is identical
for every system, so request i of plain serving is the reference of request i elsewhere.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from bench.load import Run

WINDOW = 1000  # requests per agreement window (the per-window agreement bar)
SERIES_BIN = 100  # requests per point of the over-time series
RECOVERY_WINDOW = 100  # trailing requests over which recovery is judged
RECOVERY_LEVEL = 0.9  # back to this share of the phase's steady-state hit rate
STEADY_TAIL = 1 / 3  # the last third of a phase is its steady state
MIN_STEADY_HIT_RATE = 0.05  # below this a phase has no hit rate to recover to
FULL, EXACT = "full", "exact"  # exit names of the whole model and of the exact-match cache


@dataclass(frozen=True)
class Requests:
    latency_ms: np.ndarray  # [n] float64
    labels: np.ndarray  # [n] int64 served label (-1: the request failed)
    hit: np.ndarray  # [n] bool: answered by a learned cache
    exact: np.ndarray  # [n] bool: answered by the exact-match cache
    exit_layer: tuple[str, ...]  # [n] learned-cache exit layer, "" when none
    version: np.ndarray  # [n] int64 bundle version in the answer (0: none)
    sent_s: np.ndarray  # [n] seconds from the start of the run to the request's send
    errors: int
    wall_s: float

    @classmethod
    def from_run(cls, run: Run) -> Requests:
        n = len(run.latency_s)
        exact = run.exact_hit if run.exact_hit is not None else np.zeros(n, dtype=bool)
        return cls(
            run.latency_s * 1e3,
            run.labels,
            run.hit,
            exact,
            tuple(run.exit_layer),
            run.bundle_version,
            run.sent_at,
            run.errors,
            run.wall_s,
        )

    def __len__(self) -> int:
        return len(self.latency_ms)

    @property
    def early(self) -> np.ndarray:
        """[n] bool: answered without running the whole model (either cache)."""
        return self.hit | self.exact


def windows(values: np.ndarray, window: int = WINDOW) -> tuple[float, int]:
    """(lowest mean over any `window` consecutive values, its start); the whole array if
    shorter. Every window, not only aligned ones: the target holds in *every* window."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) == 0:
        return float("nan"), 0
    if len(v) <= window:
        return float(v.mean()), 0
    c = np.concatenate([[0.0], np.cumsum(v)])
    means = (c[window:] - c[:-window]) / window  # [n - window + 1]
    start = int(means.argmin())
    return float(means[start]), start


def summarize(
    req: Requests, base: np.ndarray, truth: np.ndarray, plain: Requests | None
) -> dict[str, float | int | None]:
    """One row of the summary table for one system on one workload."""
    lat = req.latency_ms
    agree = req.labels == base
    worst, worst_start = windows(agree)
    out: dict[str, float | int | None] = {
        "requests": len(req),
        "errors": req.errors,
        "mean_ms": float(lat.mean()),
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "hit_rate": float(req.hit.mean()),
        "exact_hit_rate": float(req.exact.mean()),
        "early_rate": float(req.early.mean()),
        "agreement": float(agree.mean()),
        "worst_window_agreement": worst,
        "worst_window_start": worst_start,
        "window": min(WINDOW, len(req)),
        "top1": float((req.labels == truth).mean()),
        "bundle_versions": sorted({int(v) for v in np.unique(req.version)}),
        "speedup_mean": None,
        "speedup_p50": None,
        "miss_overhead": None,
        "hit_speedup": None,
    }
    if plain is not None:
        assert len(plain) == len(req), "systems must answer the same stream"
        out["speedup_mean"] = float(plain.latency_ms.mean() / lat.mean())
        out["speedup_p50"] = float(np.median(plain.latency_ms) / np.median(lat))
        miss = ~req.early
        if miss.any():  # the miss path: the same requests, caches on vs plain serving
            out["miss_overhead"] = float(lat[miss].mean() / plain.latency_ms[miss].mean())
        if req.early.any():
            out["hit_speedup"] = float(plain.latency_ms[req.early].mean() / lat[req.early].mean())
    return out


def series(req: Requests, base: np.ndarray, bin_size: int = SERIES_BIN) -> dict[str, list[float]]:
    """Hit rate, latency and agreement per `bin_size` consecutive requests, over time."""
    n = len(req)
    starts = list(range(0, n, bin_size))
    out: dict[str, list[float]] = {
        k: [] for k in ("start", "t_s", "hit_rate", "early_rate", "mean_ms", "agreement")
    }
    for s in starts:
        w = slice(s, min(s + bin_size, n))
        out["start"].append(s)
        out["t_s"].append(float(req.sent_s[w].max()))
        out["hit_rate"].append(float(req.hit[w].mean()))
        out["early_rate"].append(float(req.early[w].mean()))
        out["mean_ms"].append(float(req.latency_ms[w].mean()))
        out["agreement"].append(float((req.labels[w] == base[w]).mean()))
    return out


def change_points(phase: np.ndarray) -> list[int]:
    """Request indices where the stream's working set or class mix is replaced."""
    p = np.asarray(phase)
    return [int(i) for i in np.flatnonzero(p[1:] != p[:-1]) + 1]


def recovery(
    hit: np.ndarray,
    sent_s: np.ndarray,
    changes: list[int],
    window: int = RECOVERY_WINDOW,
    level: float = RECOVERY_LEVEL,
) -> list[dict[str, float | int | str | None]]:
    """After each change: how long until the trailing hit rate over `window` requests is back
    to `level` x the phase's steady state (the hit rate over its last third).

    The trailing window lies wholly after the change, so the shortest possible recovery is
    `window` requests: that is the resolution of the figure. A phase whose steady state is
    below MIN_STEADY_HIT_RATE has nothing to recover to when the hit rate before the change
    was as low ("no steady-state hits"); after a phase with hits it is a failure ("hits lost").
    """
    h = np.asarray(hit, dtype=np.float64)
    n = len(h)
    out: list[dict[str, float | int | str | None]] = []
    for k, c in enumerate(changes):
        end = changes[k + 1] if k + 1 < len(changes) else n
        length = end - c
        tail = max(window, int(length * STEADY_TAIL))
        before = h[max(0, c - window) : c]
        row: dict[str, float | int | str | None] = {
            "change_at": c,
            "change_t_s": float(sent_s[c]) if c < n else None,
            "before_hit_rate": float(before.mean()) if len(before) else None,
            "steady_hit_rate": None,
            "dip_hit_rate": None,
            "recovery_requests": None,
            "recovery_s": None,
            "status": "",
        }
        if length < 2 * window:
            row["status"] = "phase too short to judge"
            out.append(row)
            continue
        steady = float(h[end - tail : end].mean())
        c_sum = np.concatenate([[0.0], np.cumsum(h[c:end])])
        trailing = (c_sum[window:] - c_sum[:-window]) / window  # [length - window + 1]
        row["steady_hit_rate"] = steady
        row["dip_hit_rate"] = float(trailing.min())
        if steady < MIN_STEADY_HIT_RATE:  # nothing to recover to, or hits lost for good
            lost = (
                row["before_hit_rate"] is not None and row["before_hit_rate"] >= MIN_STEADY_HIT_RATE
            )
            row["status"] = "hits lost" if lost else "no steady-state hits"
        else:
            reached = np.flatnonzero(trailing >= level * steady)
            if len(reached) == 0:
                row["status"] = "not recovered"
            else:
                j = c + window - 1 + int(reached[0])  # last request of the first good window
                row["recovery_requests"] = j - c + 1
                row["recovery_s"] = float(sent_s[j] - sent_s[c])
                row["status"] = "recovered"
        out.append(row)
    return out


def exit_names(req: Requests) -> list[str]:
    """[n] where each request was answered: a learned-cache layer, EXACT or FULL."""
    return [
        EXACT if exact else (layer if hit and layer else FULL)
        for layer, hit, exact in zip(req.exit_layer, req.hit, req.exact, strict=True)
    ]


def exits(req: Requests) -> dict[str, int]:
    """Requests per exit, in order of first use."""
    return dict(Counter(exit_names(req)))


def exit_profile(req: Requests, plain: Requests) -> dict[str, dict[str, float]]:
    """Per exit: requests, and plain serving's mean latency over this system's on the same
    requests (> 1: that exit saves time). Shows where a cache pays and where it costs."""
    names = np.asarray(exit_names(req))
    out: dict[str, dict[str, float]] = {}
    for name in dict.fromkeys(names.tolist()):  # first-use order
        m = names == name
        out[name] = {
            "requests": int(m.sum()),
            "mean_ms": float(req.latency_ms[m].mean()),
            "plain_mean_ms": float(plain.latency_ms[m].mean()),
            "ratio": float(plain.latency_ms[m].mean() / req.latency_ms[m].mean()),
        }
    return out


@dataclass(frozen=True)
class Goal:
    """One number the project's targets hold us to, and what one system measured."""

    name: str
    workload: str
    system: str
    target: str
    measured: float | None
    met: bool | None  # None: not measured in this run

    def as_dict(self) -> dict[str, object]:
        return {
            "goal": self.name,
            "workload": self.workload,
            "system": self.system,
            "target": self.target,
            "measured": self.measured,
            "met": self.met,
        }


SPEEDUP_GOALS = {"instance-locality": 3.0, "class-locality": 2.0, "uniform": 1.5}
AGREEMENT_TARGET = 0.99
WINDOW_TARGET = 0.985
MISS_OVERHEAD_LIMIT = 1.05
TOP1_POINTS = 0.5
RECOVERY_LIMIT_S = 60.0


def goals(
    figures: dict[str, dict[str, dict]],
    base_top1: dict[str, float],
    recoveries: dict[str, list[dict]],
    systems: tuple[str, ...] = ("static", "online"),
) -> list[Goal]:
    """Check every goal for each learned-cache system; `figures[workload][system]` are
    `summarize` rows, `recoveries[system]` the drift workload's `recovery` rows."""
    out: list[Goal] = []

    def add(name: str, workload: str, system: str, target: str, value, ok: bool) -> None:
        out.append(Goal(name, workload, system, target, value, ok if value is not None else None))

    for system in systems:
        for workload, need in SPEEDUP_GOALS.items():
            row = figures.get(workload, {}).get(system)
            value = row["speedup_mean"] if row else None
            add(
                "mean latency reduction",
                workload,
                system,
                f">= {need:g}x",
                value,
                value is not None and value >= need,
            )
        for workload, rows in figures.items():
            row = rows.get(system)
            if row is None:
                continue
            agreement, worst = row["agreement"], row["worst_window_agreement"]
            add(
                "agreement over the stream",
                workload,
                system,
                f">= {AGREEMENT_TARGET:.1%}",
                agreement,
                agreement >= AGREEMENT_TARGET,
            )
            add(
                "agreement in every window",
                workload,
                system,
                f">= {WINDOW_TARGET:.1%}",
                worst,
                worst >= WINDOW_TARGET,
            )
            drop = (base_top1[workload] - row["top1"]) * 100
            add(
                "top-1 drop vs base model (points)",
                workload,
                system,
                f"<= {TOP1_POINTS:g}",
                drop,
                drop <= TOP1_POINTS,
            )
            ovh = row["miss_overhead"]
            add(
                "miss path vs plain serving",
                workload,
                system,
                f"<= {MISS_OVERHEAD_LIMIT:.2f}x",
                ovh,
                ovh is not None and ovh <= MISS_OVERHEAD_LIMIT,
            )
        judged = [
            r
            for r in recoveries.get(system, [])
            if r["status"] in ("recovered", "not recovered", "hits lost")
        ]
        if judged:  # met: every change recovered, the slowest within the limit
            times = [r["recovery_s"] for r in judged]
            worst_s = max((t for t in times if t is not None), default=None)
            met = None not in times and worst_s is not None and worst_s <= RECOVERY_LIMIT_S
            target = f"<= {RECOVERY_LIMIT_S:g} s after every change"
            name = "recovery to 90% of steady hit rate (s)"
            out.append(Goal(name, "drift", system, target, worst_s, met))
    return out
