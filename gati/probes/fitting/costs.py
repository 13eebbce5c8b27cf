"""The cost model behind "expected latency": measured stage times plus lookup costs.

Two ways a lookup can sit on a request's path, and the model says which it assumed:
- `local`: the probe runs in the inference process between stages. Every request that
  reaches the cut pays the probe's compute time (`lookup_ms`); a hit answers right after it.
- `remote`: the activation goes to the cache service on a long-lived stream and the base
  model keeps computing (overlapped). A request pays only the send (`send_ms`) per lookup;
  a hit answers `rtt_ms` + the probe's compute after the cut, or never later than the base
  model would have answered anyway.
Latency of a request that exits after the cut of stage s at plan position i:
    sum(stage_ms[:s+1]) + sum(overhead of lookups 0..i) + hit_delay(i)
and of one that never exits: sum(stage_ms) + sum(overhead of every lookup).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from gati.probes.fitting.fit_config import DEFAULT_RTT_MS, DEFAULT_SEND_MS, LOOKUP_MODES

# The lookup modes and the remote defaults (and where they were measured) live in
# gati.probes.fitting.fit_config, which the trainer's config imports without torch.
MODES = LOOKUP_MODES


@dataclass(frozen=True)
class CostModel:
    cut_names: tuple[str, ...]  # cut i is the output of stage i
    stage_ms: tuple[float, ...]  # one per stage, the head last: len(cut_names) + 1
    mode: str = "local"
    rtt_ms: float = DEFAULT_RTT_MS  # remote: round trip of one lookup on the bidi stream
    send_ms: float = DEFAULT_SEND_MS  # remote: what one lookup adds to a request's path

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown lookup mode {self.mode!r}; valid: {', '.join(MODES)}")
        if len(self.stage_ms) != len(self.cut_names) + 1:
            raise ValueError(
                f"{len(self.cut_names)} cuts need {len(self.cut_names) + 1} stage times, "
                f"got {len(self.stage_ms)}"
            )
        if any(t < 0 for t in self.stage_ms) or self.rtt_ms < 0 or self.send_ms < 0:
            raise ValueError("times must be >= 0")

    @property
    def full_ms(self) -> float:
        return float(sum(self.stage_ms))

    def time_to_cut(self, layer: str) -> float:
        """Milliseconds from the request's start until cut `layer` is computed."""
        return float(sum(self.stage_ms[: self.cut_names.index(layer) + 1]))

    def position(self, layer: str) -> int:
        try:
            return self.cut_names.index(layer)
        except ValueError:
            raise ValueError(f"unknown cut {layer!r}; valid: {', '.join(self.cut_names)}") from None

    def overhead(self, lookup_ms: float) -> float:
        """Critical-path cost of one lookup, paid by every request reaching it."""
        return lookup_ms if self.mode == "local" else self.send_ms

    def hit_delay(self, layer: str, lookup_ms: float) -> float:
        """From the cut to the answer, on a hit. Remote: the engine looks at replies between
        stages, so a hit answers at the end of the first stage that finishes once the reply is
        back (rtt + the probe's compute after the cut), or when the whole model would have."""
        if self.mode == "local":
            return 0.0
        t = self.time_to_cut(layer)
        ends = np.cumsum(self.stage_ms)
        i = int(np.searchsorted(ends, t + self.rtt_ms + lookup_ms - 1e-12))
        answered = float(ends[i]) if i < len(ends) - 1 else self.full_ms
        return answered - t

    def latencies(
        self, layers: Sequence[str], lookup_ms: Sequence[float], exit_pos: np.ndarray
    ) -> np.ndarray:
        """Per-request latency [n] for a plan `layers` and exits [n] (-1: no exit)."""
        over = np.array([self.overhead(c) for c in lookup_ms], dtype=np.float64)
        cum_over = np.cumsum(over)
        miss = self.full_ms + (cum_over[-1] if len(over) else 0.0)
        exit_ms = np.array(
            [
                min(
                    self.time_to_cut(layer) + cum_over[i] + self.hit_delay(layer, lookup_ms[i]),
                    miss,
                )
                for i, layer in enumerate(layers)
            ],
            dtype=np.float64,
        )
        out = np.full(len(exit_pos), miss, dtype=np.float64)
        hit = exit_pos >= 0
        out[hit] = exit_ms[exit_pos[hit]]
        return out

    def describe(self) -> dict[str, Any]:
        d = asdict(self)
        d["full_ms"] = self.full_ms
        d["assumes"] = (
            "in-process lookups, serial: each lookup's compute time is on the critical path"
            if self.mode == "local"
            else f"remote lookups overlapped with compute: {self.send_ms} ms per lookup on the "
            f"critical path, a hit answers at the first stage end {self.rtt_ms} ms + probe "
            "compute after its cut"
        )
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CostModel:
        return cls(
            tuple(d["cut_names"]),
            tuple(float(t) for t in d["stage_ms"]),
            str(d.get("mode", "local")),
            float(d.get("rtt_ms", DEFAULT_RTT_MS)),
            float(d.get("send_ms", DEFAULT_SEND_MS)),
        )


# Timings report a low quantile, not the median: on a shared machine other processes' load
# inflates the median (ResNet-56 at batch 1 measured 17.7 ms median here under load, against
# ~6.4 ms on a quiet machine), and a low quantile is closer to the machine's own
# speed. Stages and lookups are timed the same way, so their ratio (a speedup) stays honest.
QUANTILE = 0.1


@torch.inference_mode()
def measure_stage_ms(model: Any, reps: int = 50, warmup: int = 10) -> tuple[float, ...]:
    """Low-quantile time of each stage at batch 1 (preprocessing counted in the first stage)."""
    x = model.example_input(1)
    times = np.zeros((reps, model.num_stages))
    for r in range(warmup + reps):
        t0 = time.perf_counter()
        h = model.preprocess(x)
        for i, stage in enumerate(model.stages):
            h = stage(h)
            t1 = time.perf_counter()
            if r >= warmup:
                times[r - warmup, i] = t1 - t0
            t0 = t1
    return tuple(float(t) for t in np.quantile(times, QUANTILE, axis=0) * 1e3)


def measure_ms(fn: Callable[[], object], reps: int = 300, warmup: int = 30) -> float:
    """Low-quantile wall time of fn() in milliseconds (see QUANTILE)."""
    for _ in range(warmup):
        fn()
    ts = np.empty(reps)
    for r in range(reps):
        t0 = time.perf_counter()
        fn()
        ts[r] = time.perf_counter() - t0
    return float(np.quantile(ts, QUANTILE) * 1e3)
