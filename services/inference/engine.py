"""The request path: exact-match cache, staged forward pass, early exit on the first hit.

After each stage with an active probe the engine reduces the activation, queues a lookup on
the cache stream and goes on computing; between stages it looks at the replies that came
back. Rows of a batch exit independently and the batch shrinks as they do. Once the rows left
at the end have their logits, a pass that sent lookups tells the cache service their base
labels (one label message on the same stream) when the plan asks for them (the cache service
keeps a live memory with a rule that can answer), so it can file the activations it received
under them. Nothing here waits on the cache service, Kafka or Redis: a missing reply means the
model keeps going.
"""

from __future__ import annotations

import functools
import math
import time
import uuid
from dataclasses import dataclass, field

import numpy as np
import torch

from gati.errors import InvalidArgument, NotFound
from gati.models import StagedModel
from services.inference.cache_client import CacheClient, PendingLookup, round_trip_ms
from services.inference.exact_cache import ExactCache
from services.inference.handoff import MAX_REQUEST_ID_BYTES
from services.inference.learned import LearnedCaches
from services.inference.metrics import InferenceMetrics
from services.inference.plan import ActivePlan
from services.inference.record_jobs import RecordJob, RecordSink, RowRecord
from services.inference.served import ServedModel

FULL = "full"  # exit label of rows answered by the whole model
STAGE_EWMA = 0.05  # weight of one pass in each stage's running compute time


@dataclass
class InferResult:
    scores: np.ndarray  # [B, classes] float32: logits, or a hit's log-probabilities
    labels: np.ndarray  # [B] int64
    hit: np.ndarray  # [B] bool: answered by a learned cache
    exit_index: np.ndarray  # [B] int32: cut index of the exit, -1 for the full model
    exit_layer: str  # first hit's layer name, "" when no row hit
    bundle_version: int
    exact_hits: int
    exits: dict[str, int]  # layer -> rows a learned cache answered there


def hit_scores(label: int, confidence: float, classes: int) -> np.ndarray:
    """Log-probabilities standing in for logits on a hit: the probe's confidence on its label,
    the rest shared evenly (the base model's logits were never computed)."""
    conf = min(max(confidence, 1e-6), 1 - 1e-6)
    out = np.full(classes, math.log((1 - conf) / (classes - 1)), dtype=np.float32)
    out[label] = math.log(conf)
    return out


class Engine:
    def __init__(
        self,
        models: dict[str, ServedModel],
        metrics: InferenceMetrics,
        *,
        cache: LearnedCaches | None = None,
        exact: ExactCache | None = None,
        recorder: RecordSink | None = None,
        max_batch: int = 256,
        record_layers: tuple[str, ...] = (),
    ) -> None:
        """`cache`: None without a cache service or with learned caches off; `exact`: None
        without an exact-match cache; `recorder`: None when no records are kept."""
        self.models = models
        self.metrics = metrics
        self.cache = cache
        self.exact = exact
        self.recorder = recorder
        self.max_batch = max_batch
        self._record_cuts = {
            name: self.record_indices(m.model, record_layers) for name, m in models.items()
        }
        # Running compute time of each stage at batch 1 (seconds): what a hit saves.
        self.stage_s = {name: np.zeros(m.model.num_stages) for name, m in models.items()}

    @staticmethod
    def record_indices(model: StagedModel, layers: tuple[str, ...]) -> frozenset[int]:
        return frozenset(model.cut_index(n) for n in (layers or model.cut_names))

    def get(self, name: str, version: str = "") -> ServedModel:
        served = self.models.get(name)
        if served is None:
            raise NotFound(f"unknown model {name!r}; served: {', '.join(sorted(self.models))}")
        if version and version != served.version:
            raise NotFound(f"model {name!r} has no version {version!r}; served: {served.version}")
        return served

    # --- request path ----------------------------------------------------------------------
    def infer(
        self, name: str, batch: np.ndarray, *, caches: bool = True, request_id: str = ""
    ) -> InferResult:
        served = self.get(name)
        model = served.model
        if len(batch) > self.max_batch:
            raise InvalidArgument(f"batch {len(batch)} exceeds the limit of {self.max_batch}")
        request_id = request_id or uuid.uuid4().hex
        n = len(batch)
        scores = np.empty((n, model.num_classes), dtype=np.float32)
        labels = np.empty(n, dtype=np.int64)
        hit = np.zeros(n, dtype=bool)
        exit_index = np.full(n, -1, dtype=np.int32)

        todo = np.arange(n)
        keys: list[bytes] = []
        if self.exact is not None and caches:  # caches=false: the plain model, nothing cached
            keys = [ExactCache.key(name, row) for row in batch]
            found = [self.exact.get(k) for k in keys]
            for i, item in enumerate(found):
                if item is not None:
                    scores[i], labels[i] = item
            todo = np.array([i for i, item in enumerate(found) if item is None], dtype=np.int64)
            self.metrics.exact_hits.labels(name).inc(n - len(todo))
            self.metrics.exact_misses.labels(name).inc(len(todo))
        exact_hits = n - len(todo)

        plan, learned = None, self.cache if caches else None
        if learned is not None:
            plan = learned.plan(name)
            if plan is None:  # the pass sends no lookups
                if not learned.client.connected:
                    self.metrics.cache_unavailable.labels(name).inc()
                learned = None

        job = RecordJob(name, request_id, time.time()) if self.recorder is not None else None
        state = _Pass(served, plan, learned, request_id, scores, labels, hit, exit_index, keys, job)
        if len(todo):
            self._forward(state, batch[todo], todo)
            if learned is not None:
                learned.served(name, state.version, len(todo), state.exits)
        if job is not None and job.rows:
            self.recorder.submit(job)  # type: ignore[union-attr]
        self.metrics.rows.labels(name).inc(n)
        return InferResult(
            scores,
            labels,
            hit,
            exit_index,
            state.first_exit,
            plan.version if plan else 0,
            exact_hits,
            state.exits,
        )

    def _forward(self, st: _Pass, x: np.ndarray, row_ids: np.ndarray) -> None:
        """Run the stages on rows `row_ids` (inputs `x`), writing answers into `st`."""
        model = st.served.model
        last = model.num_stages - 1
        learned = st.learned
        active = st.plan.layers if st.plan is not None else {}
        record_cuts = self._record_cuts[st.served.name] if st.job is not None else frozenset()
        st.row_ids = row_ids
        st.alive = np.arange(len(row_ids))  # positions (into row_ids) still computing
        if learned is not None and active:  # replies counted before this pass: not its own
            st.replies = learned.client.replies()
        st.acts = {int(p): [] for p in st.alive}
        st.stage_s = np.full(model.num_stages, np.nan)
        clock = time.perf_counter
        with torch.inference_mode():
            h = model.preprocess(torch.from_numpy(x))
            t0 = clock()
            for i, stage in enumerate(model.stages):
                h = stage(h)  # [rows alive, C, H, W]; the head gives [rows alive, classes]
                t1 = clock()
                st.stage_s[i] = t1 - t0
                if i == last:
                    break
                if i in record_cuts:
                    cut = model.cut_names[i]
                    for j, p in enumerate(st.alive):
                        st.acts[int(p)].append((cut, h[j]))
                if learned is None or (i not in active and not st.pending):
                    t0 = t1
                    continue
                if i in active:
                    layer, reduction = active[i]
                    if st.rows_i32 is None:  # the rows still computing, as the relay wants
                        st.rows_i32 = row_ids[st.alive].astype(np.int32)
                    lookup = learned.client.lookup(
                        st.rid_bytes,
                        st.served.name,
                        layer,
                        i,
                        h,
                        reduction,
                        st.rows_i32,
                        st.version,
                    )
                    if lookup is not None:
                        st.pending.append(lookup)
                        st.sent.append(lookup)
                replies = learned.client.replies() if st.pending else st.replies
                if replies != st.replies:  # a reply came in: some of ours may be among them
                    st.replies = replies
                    keep = self._take_hits(st, learned, h, i)
                    if keep is not None:
                        h = h[keep]
                        st.alive = st.alive[keep]
                        st.rows_i32 = None
                t0 = clock()
                st.lookup_s += t0 - t1
                if len(st.alive) == 0:
                    break
            if len(st.alive):
                self._finish_full(st, h.float().numpy())
        self._account(st)

    def _account(self, st: _Pass) -> None:
        """After a pass: stage times, lookup costs and savings, unanswered lookups, records."""
        name = st.served.name
        if len(st.row_ids) == 1:  # stage times are per batch-1 pass
            ran = ~np.isnan(st.stage_s)
            ewma = self.stage_s[name]
            fresh = ran & (ewma == 0)
            ewma[fresh] = st.stage_s[fresh]
            old = ran & ~fresh
            ewma[old] += STAGE_EWMA * (st.stage_s[old] - ewma[old])
        if st.sent and st.learned is not None:  # lookups went out only with a plan
            per_lookup = st.lookup_s / len(st.sent)
            self.metrics.lookup_cost.labels(name).observe(per_lookup)
            st.learned.account_lookups(name, st.version, st.sent, per_lookup, st.saved_s)
            unanswered = CacheClient.unanswered(st.pending)
            if unanswered:
                self.metrics.lookup_unanswered.labels(name).inc(unanswered)
        if st.job is not None:
            st.job.lookup_rtt_ms = round_trip_ms(st.sent, time.perf_counter())

    def _finish_full(self, st: _Pass, logits: np.ndarray) -> None:
        """Rows that ran the whole model: their logits are the base model's answer."""
        rows = st.row_ids[st.alive]
        labels = logits.argmax(axis=1)
        st.scores[rows] = logits
        st.labels[rows] = labels
        learned, plan = st.learned, st.plan
        if st.sent and learned is not None and plan is not None and plan.live_labels:
            rows_i32 = st.rows_i32 if st.rows_i32 is not None else rows.astype(np.int32)
            learned.client.label(  # name their base labels
                st.rid_bytes, st.served.name, rows_i32, labels.astype(np.int32)
            )
        self.metrics.exits.labels(st.served.name, FULL).inc(len(rows))
        if st.keys:  # the exact-match cache was consulted: remember what the model said
            for k, r in enumerate(rows):
                self.exact.put(st.keys[r], logits[k], int(st.labels[r]))
        if st.job is not None:
            for k, p in enumerate(st.alive):
                r = int(st.row_ids[p])
                label = int(st.labels[r])
                st.job.rows.append(
                    RowRecord(
                        r,
                        st.acts[int(p)],
                        False,
                        "",
                        label,
                        st.version,
                        logits[k].copy(),
                        label,
                    )
                )

    def _take_hits(
        self, st: _Pass, learned: LearnedCaches, h: torch.Tensor, stage: int
    ) -> np.ndarray | None:
        """Apply replies that arrived; the keep-mask over `st.alive`, or None if no row exits."""
        model = st.served.model
        position = {int(st.row_ids[p]): j for j, p in enumerate(st.alive)}
        exiting: dict[int, tuple[int, float, str]] = {}  # index in alive -> label, conf, layer
        for p in [p for p in st.pending if p.poll() is not None]:
            st.pending.remove(p)
            learned.client.note_reply(p, stage)
            reply = p.reply
            if not reply.hits:  # type: ignore[union-attr]  # a miss or an error
                continue
            for row, is_hit, label, conf in zip(
                p.rows,
                reply.hit,  # type: ignore[union-attr]
                reply.label,  # type: ignore[union-attr]
                reply.confidence,  # type: ignore[union-attr]
                strict=False,
            ):
                j = position.get(int(row))
                if is_hit and j is not None and j not in exiting:
                    exiting[j] = (int(label), float(conf), p.layer)
        if not exiting:
            return None
        shadow = learned.shadow  # None: no hit is finished in the background
        remaining_s = float(self.stage_s[st.served.name][stage + 1 :].sum()) / len(st.alive)
        keep = np.ones(len(st.alive), dtype=bool)
        shadowed: list[tuple[int, int, str, RowRecord | None]] = []
        for j, (label, conf, layer) in sorted(exiting.items()):
            p = int(st.alive[j])
            r = int(st.row_ids[p])
            keep[j] = False
            st.scores[r] = hit_scores(label, conf, model.num_classes)
            st.labels[r] = label
            st.hit[r] = True
            st.exit_index[r] = model.cut_index(layer)
            st.first_exit = st.first_exit or layer
            st.exits[layer] = st.exits.get(layer, 0) + 1
            st.saved_s[layer] = st.saved_s.get(layer, 0.0) + remaining_s
            self.metrics.exits.labels(st.served.name, layer).inc()
            record = None
            if st.job is not None:
                record = RowRecord(r, st.acts[p], True, layer, label, st.version)
            if shadow is not None and shadow.wanted():
                shadowed.append((j, r, layer, record))
            elif record is not None:
                st.job.rows.append(record)  # type: ignore[union-attr]
        if shadow is not None and shadowed:
            accepted = shadow.submit(
                st.served,
                stage,
                h[[j for j, *_ in shadowed]].clone(),
                [(r, layer, int(st.labels[r]), rec) for _, r, layer, rec in shadowed],
                st.request_id,
                st.version,
                cache=learned.client if st.plan is not None and st.plan.live_labels else None,
            )
            if not accepted and st.job is not None:  # no slot: record it without a base label
                st.job.rows.extend(rec for *_, rec in shadowed if rec is not None)
        return keep


@dataclass
class _Pass:
    """Per-request state of one forward pass."""

    served: ServedModel
    plan: ActivePlan | None
    learned: LearnedCaches | None  # the engine's, while `plan` is not None
    request_id: str
    scores: np.ndarray
    labels: np.ndarray
    hit: np.ndarray
    exit_index: np.ndarray
    keys: list[bytes]
    job: RecordJob | None
    first_exit: str = ""
    exits: dict[str, int] = field(default_factory=dict)  # layer -> rows that exited there
    pending: list[PendingLookup] = field(default_factory=list)  # sent, reply not applied yet
    sent: list[PendingLookup] = field(default_factory=list)  # every lookup of the request
    row_ids: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    alive: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    acts: dict[int, list[tuple[str, torch.Tensor]]] = field(default_factory=dict)
    stage_s: np.ndarray = field(default_factory=lambda: np.empty(0))  # this pass, NaN: not run
    lookup_s: float = 0.0  # the model's thread's time on lookups (handing over, replies)
    saved_s: dict[str, float] = field(default_factory=dict)  # layer -> compute its hits saved
    rows_i32: np.ndarray | None = None  # row ids of st.alive as int32 (None: recompute)
    replies: int = -1  # the relay's reply count when this pass last looked at its lookups

    @functools.cached_property
    def rid_bytes(self) -> bytes:  # encoded once per pass, not once per lookup
        return self.request_id.encode()[:MAX_REQUEST_ID_BYTES]

    @property
    def version(self) -> int:
        return self.plan.version if self.plan is not None else 0
