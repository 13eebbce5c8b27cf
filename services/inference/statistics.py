"""Per-model request statistics in the shape of Triton's ModelStatistics.

Fed once per request by the shared data plane, so gRPC's ModelStatistics and REST's
/v2/models/stats read the same numbers. Durations are nanoseconds summed over requests;
`gati.exits` (rows answered at each exit: a cut point's name, "full" for the whole model,
"exact" for the exact-match cache) is gati's own key, since Triton's message has no field
for it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gati.errors import NotFound
from services.inference.engine import FULL, InferResult
from services.inference.served import ServedModel

EXACT = "exact"  # exit name of rows answered by the exact-match cache
PHASES = ("compute_input", "compute_infer", "compute_output")


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int) -> None:
        self.count += 1
        self.ns += max(ns, 0)

    def json(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass(frozen=True)
class Timing:
    """perf_counter_ns marks of one request: arrival, a worker took it, inputs decoded, the
    engine answered, outputs encoded."""

    received: int
    started: int
    decoded: int
    inferred: int
    encoded: int


class ModelStatistics:
    """One model's counters; every update holds the lock for a few additions only."""

    def __init__(self, served: ServedModel) -> None:
        self.name = served.name
        self.version = served.version
        self._lock = threading.Lock()
        self._last_ms = 0
        self._rows = 0
        self._executions = 0
        self._stats = {
            k: Duration() for k in ("success", "fail", "queue", *PHASES, "cache_hit", "cache_miss")
        }
        self._batches: dict[int, dict[str, Duration]] = {}
        self._exits: dict[str, int] = {}

    def success(self, t: Timing, result: InferResult, exact_consulted: bool) -> None:
        rows = len(result.labels)
        exits = self._exit_counts(result)
        phases = (t.decoded - t.started, t.inferred - t.decoded, t.encoded - t.inferred)
        whole_exact = result.exact_hits == rows
        with self._lock:
            self._last_ms = time.time_ns() // 1_000_000
            self._rows += rows
            self._executions += not whole_exact
            s = self._stats
            s["success"].add(t.encoded - t.received)
            s["queue"].add(t.started - t.received)
            batch = self._batches.setdefault(rows, {k: Duration() for k in PHASES})
            for key, ns in zip(PHASES, phases, strict=True):
                s[key].add(ns)
                batch[key].add(ns)
            if exact_consulted:
                if whole_exact:
                    s["cache_hit"].add(phases[1])
                else:
                    s["cache_miss"].add(0)
            for name, n in exits.items():
                self._exits[name] = self._exits.get(name, 0) + n

    def failure(self, received_ns: int) -> None:
        with self._lock:
            self._last_ms = time.time_ns() // 1_000_000
            self._stats["fail"].add(time.perf_counter_ns() - received_ns)

    def _exit_counts(self, result: InferResult) -> dict[str, int]:
        rows = len(result.labels)
        counts = dict(result.exits)  # the engine counted them as rows exited
        hits = sum(counts.values())
        if result.exact_hits:
            counts[EXACT] = result.exact_hits
        if rows - hits - result.exact_hits:
            counts[FULL] = rows - hits - result.exact_hits
        return counts

    def snapshot(self) -> dict[str, Any]:
        """Triton's ModelStatistics as JSON (integers), plus `gati.exits`."""
        with self._lock:
            return {
                "name": self.name,
                "version": self.version,
                "last_inference": self._last_ms,
                "inference_count": self._rows,
                "execution_count": self._executions,
                "inference_stats": {k: d.json() for k, d in self._stats.items()},
                "batch_stats": [
                    {"batch_size": size, **{k: d.json() for k, d in phases.items()}}
                    for size, phases in sorted(self._batches.items())
                ],
                "gati.exits": dict(sorted(self._exits.items())),
            }


class Statistics:
    """Every served model's statistics."""

    def __init__(self, models: Mapping[str, ServedModel]) -> None:
        self.models = {name: ModelStatistics(served) for name, served in models.items()}

    def report(self, name: str = "", version: str = "") -> dict[str, Any]:
        """{"model_stats": [...]} for one model (and version), or every model if `name` is
        empty; an unknown model or version raises NotFound."""
        if not name:
            return {"model_stats": [m.snapshot() for _, m in sorted(self.models.items())]}
        stats = self.models.get(name)
        if stats is None:
            raise NotFound(f"unknown model {name!r}; served: {', '.join(sorted(self.models))}")
        if version and version != stats.version:
            raise NotFound(f"model {name!r} has no version {version!r}; served: {stats.version}")
        return {"model_stats": [stats.snapshot()]}
