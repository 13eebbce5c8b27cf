"""Client side of the gati.v1 cache API: one long-lived Lookup stream, plans per model.

The request path never blocks here: `lookup` queues a message and returns a `PendingLookup`
the engine polls between stages; a reply that is not back when the model has finished is
simply ignored. If the cache service is unreachable, `plan` returns None (the full model
serves), and a background thread reconnects with exponential backoff.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import numpy as np

from gati.api import cache_pb2, cache_pb2_grpc
from gati.models import StagedModel
from gati.probes.reductions import REDUCTIONS
from services.inference.metrics import InferenceMetrics

log = logging.getLogger(__name__)

_CLOSE = object()


@dataclass(frozen=True)
class ActivePlan:
    """The probes in use for one model: stage index -> (layer name, input reduction)."""

    model: str
    version: int
    layers: dict[int, tuple[str, str]]


class PendingLookup:
    """One lookup in flight; `reply` is set by the stream's reader thread."""

    __slots__ = ("layer", "model", "replied_at", "reply", "rows", "sent_at", "seq", "stage")

    def __init__(self, seq: int, model: str, layer: str, stage: int, rows: np.ndarray) -> None:
        self.seq = seq
        self.model = model
        self.layer = layer
        self.stage = stage
        self.rows = rows  # batch row ids the activation rows belong to
        self.reply: cache_pb2.LookupReply | None = None
        self.sent_at = time.perf_counter()
        self.replied_at = 0.0


class CacheClient:
    def __init__(
        self,
        address: str,
        models: dict[str, StagedModel],
        metrics: InferenceMetrics,
        plan_refresh_seconds: float = 1.0,
        max_message_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self.address = address
        self._models = models
        self._metrics = metrics
        self._refresh = plan_refresh_seconds
        self._channel = grpc.insecure_channel(
            address,
            options=[
                ("grpc.max_send_message_length", max_message_bytes),
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.keepalive_time_ms", 10000),
            ],
        )
        self._stub = cache_pb2_grpc.CacheServiceStub(self._channel)
        self._seq = itertools.count(1)
        self._pending: dict[int, PendingLookup] = {}
        self._send: queue.SimpleQueue = queue.SimpleQueue()
        self._connected = threading.Event()
        self._closed = threading.Event()
        self._plan_wakeup = threading.Event()
        self._plans: dict[str, ActivePlan | None] = dict.fromkeys(models)
        self._threads = [
            threading.Thread(target=self._stream_loop, name="cache-stream", daemon=True),
            threading.Thread(target=self._plan_loop, name="cache-plan", daemon=True),
        ]
        for t in self._threads:
            t.start()

    # --- request path ------------------------------------------------------------------
    def plan(self, model: str) -> ActivePlan | None:
        """The plan to use now, or None when there is none or the service is unreachable."""
        if not self._connected.is_set():
            return None
        return self._plans.get(model)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def lookup(
        self,
        request_id: str,
        model: str,
        layer: str,
        stage: int,
        reduced: np.ndarray,
        rows: np.ndarray,
        version: int,
    ) -> PendingLookup:
        """Queue one lookup of `reduced` [rows, D] float32; never blocks."""
        seq = next(self._seq)
        pending = PendingLookup(seq, model, layer, stage, rows)
        self._pending[seq] = pending
        self._send.put(
            cache_pb2.LookupRequest(
                seq=seq,
                request_id=request_id,
                model=model,
                layer=layer,
                activation=cache_pb2.Tensor(
                    dtype="float32", shape=reduced.shape, data=reduced.tobytes()
                ),
                bundle_version=version,
                rows=rows.tolist(),
            )
        )
        self._metrics.lookups.labels(model, layer).inc()
        return pending

    def forget(self, pendings: list[PendingLookup]) -> int:
        """Drop lookups the request no longer waits for; returns how many had no reply."""
        unanswered = 0
        for p in pendings:
            if self._pending.pop(p.seq, None) is not None:
                unanswered += 1
        return unanswered

    # --- background ----------------------------------------------------------------------
    def _requests(self, outbox: queue.SimpleQueue) -> Iterator[cache_pb2.LookupRequest]:
        while True:
            item = outbox.get()
            if item is _CLOSE:
                return
            yield item

    def _stream_loop(self) -> None:
        backoff = 0.05
        while not self._closed.is_set():
            try:
                grpc.channel_ready_future(self._channel).result(timeout=max(backoff, 0.5))
            except grpc.FutureTimeoutError:
                backoff = min(backoff * 2, 2.0)
                continue
            outbox: queue.SimpleQueue = queue.SimpleQueue()
            self._send = outbox
            call = self._stub.Lookup(self._requests(outbox))
            self._metrics.cache_reconnects.inc()
            self._connected.set()
            self._plan_wakeup.set()
            log.info("lookup stream to %s open", self.address)
            try:
                for reply in call:
                    pending = self._pending.pop(reply.seq, None)
                    if pending is None:
                        continue  # the request finished without it
                    pending.replied_at = time.perf_counter()
                    pending.reply = reply
                    self._metrics.lookup_rtt.observe(pending.replied_at - pending.sent_at)
                    plan = self._plans.get(pending.model)
                    if plan is not None and reply.bundle_version != plan.version:
                        self._plan_wakeup.set()  # a new bundle is live: fetch its plan now
                backoff = 0.05
            except grpc.RpcError as exc:
                if not self._closed.is_set():
                    log.warning("lookup stream to %s failed: %s", self.address, exc.code())
            finally:
                self._connected.clear()
                outbox.put(_CLOSE)
                self._pending.clear()
            if not self._closed.wait(backoff):
                backoff = min(backoff * 2, 2.0)

    def _plan_loop(self) -> None:
        while not self._closed.is_set():
            self._plan_wakeup.wait(self._refresh)
            self._plan_wakeup.clear()
            if self._closed.is_set() or not self._connected.is_set():
                continue
            for name in self._models:
                self._refresh_plan(name)

    def refresh_plans(self) -> None:
        """Re-read every model's plan now (tests and start-up)."""
        for name in self._models:
            self._refresh_plan(name)

    def _refresh_plan(self, name: str) -> None:
        try:
            reply = self._stub.GetPlan(cache_pb2.PlanRequest(model=name), timeout=2.0)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                self._set_plan(name, None)
            return
        self._set_plan(name, self._validate(name, reply))

    def _validate(self, name: str, plan: cache_pb2.Plan) -> ActivePlan | None:
        model = self._models[name]
        if plan.model_fingerprint != model.fingerprint():
            self._refuse(
                name,
                "fingerprint",
                f"bundle v{plan.bundle_version} was fitted to "
                f"{plan.model_fingerprint[:12]}, this model is {model.fingerprint()[:12]}",
            )
            return None
        layers: dict[int, tuple[str, str]] = {}
        for lp in plan.layers:
            if lp.layer not in model.cut_names or lp.reduction not in REDUCTIONS:
                self._refuse(
                    name,
                    "layer",
                    f"unknown layer {lp.layer!r} or reduction "
                    f"{lp.reduction!r} in bundle v{plan.bundle_version}",
                )
                return None
            layers[model.cut_index(lp.layer)] = (lp.layer, lp.reduction)
        return ActivePlan(name, plan.bundle_version, layers)

    def _refuse(self, name: str, reason: str, message: str) -> None:
        self._metrics.plans_refused.labels(name, reason).inc()
        log.error("refusing plan for %s: %s", name, message)

    def _set_plan(self, name: str, plan: ActivePlan | None) -> None:
        old = self._plans.get(name)
        if (old and old.version) != (plan and plan.version):
            log.info("model %s: plan %s -> %s", name, old and old.version, plan and plan.version)
        self._plans[name] = plan
        self._metrics.plan_version.labels(name).set(plan.version if plan else 0)

    def close(self) -> None:
        self._closed.set()
        self._plan_wakeup.set()
        self._send.put(_CLOSE)
        self._channel.close()
        for t in self._threads:
            t.join(timeout=2)


def round_trip_ms(lookups: list[PendingLookup], now: float) -> float:
    """Mean send-to-reply time of a request's lookups, in ms; a reply still out counts with
    the time it has waited so far (a lower bound, so late replies are not simply ignored)."""
    if not lookups:
        return 0.0
    waits = [(p.replied_at or now) - p.sent_at for p in lookups]
    return 1000.0 * sum(waits) / len(waits)
