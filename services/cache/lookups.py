"""The cache service's data plane, free of gRPC: a decoded lookup in, hit/label/confidence out.

A `Lookup` is checked against the bundle in use, joins the micro-batcher of its (model, layer),
and is evaluated with the others of its batch in one `ProbeRuntime.lookup` call on one
runtime snapshot (so a swap never splits a batch). A lookup that cannot be evaluated gets an
`error` and a reason; it never raises into the stream that carried it.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from gati.errors import InvalidArgument, NotFound
from gati.probes.runtime import ProbeRuntime
from services.cache.batcher import MicroBatcher
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
    """Evaluates lookups against the probe store; one micro-batcher per (model, layer)."""

    def __init__(
        self,
        probes: ProbeStore,
        states: RowStates,
        metrics: CacheMetrics,
        max_batch: int,
        batch_wait_s: float,
    ) -> None:
        self.probes = probes
        self.states = states
        self.metrics = metrics
        self._max_batch = max_batch
        self._wait_s = batch_wait_s
        self._batchers: dict[tuple[str, str], MicroBatcher[Lookup]] = {}
        self._batchers_lock = threading.Lock()

    # ---- request path -------------------------------------------------------------------
    def lookup(self, item: Lookup) -> Lookup:
        """Evaluate `item` (possibly together with concurrent ones); fills its answer."""
        runtime = self.probes.get(item.model)
        if runtime is None:
            item.fail("model", f"no bundle for model {item.model!r}")
        elif self._check(runtime, item):  # else _check set the error
            self._batcher(item.model, item.layer).submit(item, item.arrived)
        if item.error:
            self.metrics.errors.labels(item.reason).inc()
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

    def _batcher(self, model: str, layer: str) -> MicroBatcher[Lookup]:
        key = (model, layer)
        batcher = self._batchers.get(key)
        if batcher is None:  # only for layers some bundle made active, so the dict stays small
            with self._batchers_lock:
                batcher = self._batchers.setdefault(
                    key,
                    MicroBatcher(
                        lambda items, k=key: self._evaluate(k, items), self._max_batch, self._wait_s
                    ),
                )
        return batcher

    def _evaluate(self, key: tuple[str, str], items: list[Lookup]) -> None:
        """One runtime call for every item of a batch (all of one model and layer)."""
        model, layer = key
        runtime = self.probes.get(model)  # the snapshot this whole batch uses
        if runtime is None:
            for item in items:
                item.fail("model", f"no bundle for model {model!r}")
            return
        ok = [item for item in items if self._check(runtime, item)]
        try:
            if ok:
                self._run(runtime, layer, ok)
        except Exception:
            log.exception("lookup batch of %d failed at %s/%s", len(ok), model, layer)
            for item in ok:
                item.fail("internal", "internal error evaluating the probe", runtime.version)
        self._record(model, layer, items)

    def _run(self, runtime: ProbeRuntime, layer: str, items: list[Lookup]) -> None:
        now = time.monotonic()
        states = []
        for item in items:
            states += self.states.get(item.model, item.request_id, item.rows, now)
        x = items[0].x if len(items) == 1 else np.concatenate([i.x for i in items])  # [sum rows, D]
        hit, label, conf = runtime.lookup(layer, x, states)
        start = 0
        for item in items:
            end = start + len(item.rows)
            item.hit, item.label = hit[start:end], label[start:end]
            item.confidence = conf[start:end]
            item.version = runtime.version
            start = end

    def _record(self, model: str, layer: str, items: list[Lookup]) -> None:
        m = self.metrics.layer(model, layer)
        done = time.perf_counter()
        evaluated = hits = rows = 0
        for item in items:
            if item.error:
                continue
            evaluated += 1
            rows += len(item.hit)
            hits += int(np.count_nonzero(item.hit))
            m.latency.observe(done - item.arrived)
        if evaluated:
            m.lookups.inc(evaluated)
            if hits:
                m.hits.inc(hits)
            if rows - hits:
                m.misses.inc(rows - hits)
        m.batch_size.observe(len(items))
