"""The cache service's data plane, free of gRPC: a decoded lookup in, hit/label/confidence out.

A `Lookup` is checked against the bundle in use and evaluated at once, in the caller's thread
(the server's event loop), with one `ProbeRuntime.lookup` call on one runtime snapshot (so a
swap never splits a lookup). There is no batching across streams: a lookup costs tens of
microseconds, and waiting for company would cost more than it saves at the rates one cache
service sees. A lookup that cannot be evaluated gets an `error` and a reason; it never raises
into the stream that carried it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from gati.errors import InvalidArgument, NotFound
from gati.probes.serving.live import LiveRule
from gati.probes.serving.runtime import ProbeRuntime
from services.cache.live import LiveStore
from services.cache.metrics import CacheMetrics
from services.cache.probe_store import ProbeStore
from services.cache.states import RowStates

log = logging.getLogger(__name__)

_EMPTY_BOOL = np.zeros(0, bool)
_EMPTY_INT = np.zeros(0, np.int32)
_EMPTY_FLOAT = np.zeros(0, np.float32)


class LookupRejected(InvalidArgument):
    """A lookup that cannot be evaluated; `reason` is one of metrics.LOOKUP_ERRORS."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(slots=True)
class Lookup:
    """One decoded lookup and, once evaluated, its answer."""

    model: str
    layer: str
    request_id: str
    x: np.ndarray  # [rows, D] float32 reduced activation
    rows: list[int]  # batch row of each activation row (keys the per-row state)
    arrived: float = field(default_factory=time.perf_counter)
    hit: np.ndarray = field(default_factory=lambda: _EMPTY_BOOL)  # [rows]
    label: np.ndarray = field(default_factory=lambda: _EMPTY_INT)  # [rows]
    confidence: np.ndarray = field(default_factory=lambda: _EMPTY_FLOAT)  # [rows]
    version: int = 0  # bundle version that answered (or was in use when it failed)
    error: str = ""
    reason: str = ""

    def fail(self, reason: str, message: str, version: int = 0) -> None:
        self.error, self.reason, self.version = message, reason, version


@dataclass(frozen=True)
class ModelSummary:
    """What the Status call reports per model."""

    model: str
    version: int
    layers: list[str]
    lookups: int
    hits: int


@dataclass(frozen=True)
class Summary:
    models: list[ModelSummary]
    bundles_refused: int
    reloads: int


class LookupEngine:
    """Evaluates lookups against the probe store."""

    def __init__(
        self,
        probes: ProbeStore,
        states: RowStates,
        metrics: CacheMetrics,
        live: LiveStore | None = None,
    ) -> None:
        self.probes = probes
        self.states = states
        self.metrics = metrics
        self.live = live  # None: no live memory (lookups answer from the bundle alone)

    # ---- request path -------------------------------------------------------------------
    def lookup(self, item: Lookup) -> Lookup:
        """Evaluate `item`; fills its answer (or its error)."""
        runtime = self.probes.get(item.model)  # the snapshot this lookup uses
        if runtime is None:
            item.fail("model", f"no bundle for model {item.model!r}")
        elif self._check(runtime, item):  # else _check set the error
            try:
                self._run(runtime, item)
            except Exception:
                log.exception("lookup failed at %s/%s", item.model, item.layer)
                item.fail("internal", "internal error evaluating the probe", runtime.version)
        if item.error:
            self.metrics.errors.labels(item.reason).inc()
        else:
            self._record(item)
        return item

    def count_rejected(self, reason: str) -> None:
        """Count a lookup refused before it reached the engine (it did not decode)."""
        self.metrics.errors.labels(reason).inc()

    def plan(self, model: str) -> ProbeRuntime:
        runtime = self.probes.get(model)
        if runtime is None:
            held = ", ".join(self.probes.models()) or "none"
            raise NotFound(f"no bundle for model {model!r} (bundles held for: {held})")
        return runtime

    def summary(self) -> Summary:
        m = self.metrics
        models = []
        for model in self.probes.models():
            runtime = self.probes.get(model)
            assert runtime is not None  # runtimes are never removed
            models.append(
                ModelSummary(
                    model,
                    runtime.version,
                    [layer for layer, _ in runtime.layers],
                    int(m.total(m.lookups, model=model)),
                    int(m.total(m.hits, model=model)),
                )
            )
        return Summary(models, int(m.total(m.refused)), int(m.total(m.reloads)))

    # ---- internals ----------------------------------------------------------------------
    @staticmethod
    def _check(runtime: ProbeRuntime, item: Lookup) -> bool:
        """Unknown layer or wrong width: answered with an error, not evaluated."""
        try:
            dim = runtime.input_dim(item.layer)
        except KeyError as exc:
            item.fail("layer", str(exc.args[0]), runtime.version)
            return False
        if item.x.shape[1] != dim:
            item.fail(
                "shape",
                f"layer {item.layer!r} of bundle v{runtime.version} reads {dim} values per row, "
                f"got {item.x.shape[1]}",
                runtime.version,
            )
            return False
        return True

    def _run(self, runtime: ProbeRuntime, item: Lookup) -> None:
        now = time.monotonic()
        states = self.states.get(item.model, item.request_id, item.rows, now)
        item.hit, item.label, item.confidence = runtime.lookup(item.layer, item.x, states)
        item.version = runtime.version
        probe = runtime.probe(item.layer)
        if self.live is not None and probe.live is not None and probe.live.active:
            self._from_memory(item, probe.live, probe.reduction, now)

    def _from_memory(self, item: Lookup, rule: LiveRule, reduction: str, now: float) -> None:
        """Rows the probe did not answer, answered by live evidence when the rule allows."""
        coarse = rule.coarse(item.x, reduction)
        hit, label = self.live.answer(  # type: ignore[union-attr]
            item.model, item.request_id, item.layer, rule, item.rows, coarse, now
        )
        new = hit & ~item.hit
        if new.any():
            item.hit = item.hit | new
            item.label = np.where(new, label, item.label).astype(np.int32)
            item.confidence = np.where(new, 1.0, item.confidence).astype(np.float32)
            self.metrics.live_hits.labels(item.model, item.layer).inc(int(new.sum()))

    def label(self, model: str, request_id: str, rows: list[int], labels: list[int]) -> int:
        """The base model's labels for rows of a request: file what was held (rows filed)."""
        if self.live is None:
            return 0
        return self.live.label(model, request_id, rows, labels, time.monotonic())

    def _record(self, item: Lookup) -> None:
        m = self.metrics.layer(item.model, item.layer)
        m.lookups.inc()
        hits = int(np.count_nonzero(item.hit))
        if hits:
            m.hits.inc(hits)
        if len(item.hit) > hits:
            m.misses.inc(len(item.hit) - hits)
        m.latency.observe(time.perf_counter() - item.arrived)
