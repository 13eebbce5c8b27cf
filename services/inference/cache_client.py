"""Client side of the gati.v1 cache API, as the model's thread sees it: plans, lookups, replies.

`lookup` copies the activation into shared memory and writes one small frame to the relay's
pipe (`services.inference.relay` holds the Lookup stream, in its own process: see
`services.inference.handoff` for why); it never blocks, and a lookup that finds no room is
dropped, counted, and the model simply goes on. `PendingLookup.poll` reads the reply table
between stages. `label` hands over, the same way, the base model's labels for rows of a request
that sent lookups, which the relay sends on the same stream (no reply). If the relay or the
cache service is down, `plan` returns None (the full model serves) while the relay reconnects
with backoff, and a relay that exits is started again.
Plans come from unary GetPlan calls on this process's own channel, once a second and at once
when a reply names a bundle version other than the plan's. Each states the model's weights
fingerprint (the cache service records what is served, for `gati probes publish` to check
bundles against). A NOT_FOUND names the models the cache service does hold: a model served
under a name no bundle is published as is logged (once, and again when what is held changes)
and exported (`gati_inference_bundle_missing`), since it would otherwise just never hit.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import torch
from google.protobuf.message import DecodeError

from gati import names
from gati.api import cache_pb2, cache_pb2_grpc
from gati.models import StagedModel
from gati.probes.serving.reductions import REDUCTIONS, grid, reduce
from services.common.backoff import Backoff
from services.inference.handoff import (
    CONNECTED,
    CONSUMED,
    ERROR_FLAG,
    LABELS,
    LOOKUP,
    MAX_REQUEST_ID_BYTES,
    NCHW,
    NHWC,
    REPLIED,
    Frame,
    Handoff,
)
from services.inference.metrics import InferenceMetrics
from services.inference.relay import RelaySpec

log = logging.getLogger(__name__)


PIPE_BYTES = 1 << 20  # room for thousands of frames if the relay stalls for a moment


@dataclass(frozen=True)
class ActivePlan:
    """The probes in use for one model: stage index -> (layer name, input reduction)."""

    model: str
    version: int
    layers: dict[int, tuple[str, str]]
    live_labels: bool = False  # the cache service files base labels in a live memory


@dataclass(frozen=True, slots=True)
class Reply:
    hits: int  # rows that hit; 0 for a miss or an error (then the arrays are left empty)
    hit: np.ndarray  # [rows] bool
    label: np.ndarray  # [rows] int32
    confidence: np.ndarray  # [rows] float32
    version: int
    error: bool


_NONE = np.zeros(0, bool)


class PendingLookup:
    """One lookup in flight; `poll` returns its reply once the relay has written it."""

    __slots__ = (
        "_handoff",
        "layer",
        "model",
        "replied_at",
        "reply",
        "rows",
        "seen_stage",
        "sent_at",
        "seq",
        "stage",
    )

    def __init__(
        self, handoff: Handoff, seq: int, model: str, layer: str, stage: int, rows: np.ndarray
    ) -> None:
        self._handoff = handoff
        self.seq = seq
        self.model = model
        self.layer = layer
        self.stage = stage
        self.rows = rows  # batch row ids the activation rows belong to
        self.reply: Reply | None = None
        self.sent_at = time.perf_counter()
        self.replied_at = 0.0  # when the relay made the reply usable (0: not seen)
        self.seen_stage = -1  # the stage after which the model's thread first saw the reply

    def poll(self) -> Reply | None:
        if self.reply is not None:
            return self.reply
        h, s = self._handoff, self.seq % self._handoff.slots
        if h.seq[s] != self.seq:
            return None
        flags = int(h.flags[s])
        error, hits = bool(flags & ERROR_FLAG), 0 if flags & ERROR_FLAG else flags >> 1
        if hits:  # only a hit needs the rows: a miss is read from the header alone
            n = int(h.rows[s])
            hit, label, conf = (
                h.hit[s, :n].astype(bool),
                h.label[s, :n].copy(),
                h.confidence[s, :n].copy(),
            )
        else:
            hit = label = conf = _NONE
        reply = Reply(hits, hit, label, conf, int(h.version[s]), error)
        replied_at = float(h.replied_at[s])
        if h.seq[s] != self.seq:  # overwritten while we copied (seqlock): not ours any more
            return None
        self.reply, self.replied_at = reply, replied_at
        return reply


@dataclass
class _Route:
    """How lookups of one (model, stage, reduction, batch rows) go to the relay, worked out
    once: the frame header, and a view of every arena slot shaped like what is copied there."""

    head: tuple[int, ...]  # Frame fields after seq and version, before the request id length
    shape: torch.Size
    memory_format: torch.memory_format | None  # None: reduced here, the slot holds [rows, D]
    views: list[np.ndarray]
    counter: Any  # the lookups-sent metric of (model, layer)


class CacheClient:
    def __init__(
        self,
        address: str,
        models: dict[str, StagedModel],
        metrics: InferenceMetrics,
        plan_refresh_seconds: float = 1.0,
        max_message_bytes: int = 64 * 1024 * 1024,
        *,
        max_rows: int = 256,
        slots: int = 1024,
        arena_slots: int = 64,
        arena_slot_bytes: int = 256 << 10,
        relay_cpus: str = "",
    ) -> None:
        self.address = address
        self._models = models
        self._model_index = {name: i for i, name in enumerate(models)}
        self._metrics = metrics
        self._refresh = plan_refresh_seconds
        self._max_message_bytes = max_message_bytes
        self._relay_cpus = relay_cpus
        self._max_rows = min(max_rows, Frame.max_rows())
        self._label_rows = Frame.max_rows(LABELS)  # a label message of more rows is split
        self._labels_sent = {name: metrics.labels_sent.labels(name) for name in models}
        self.handoff = Handoff.create(slots, self._max_rows, arena_slots, arena_slot_bytes)
        self._routes: dict[tuple[str, int, str, int], _Route] = {}
        self._seq = itertools.count(1)
        self._lock = threading.Lock()  # seq order = pipe order, so slots are freed in order
        self._pipe_w: int | None = None
        self._relay: subprocess.Popen | None = None
        self._closed = threading.Event()
        self._plan_wakeup = threading.Event()
        self._plans: dict[str, ActivePlan | None] = dict.fromkeys(models)
        # model -> the names the cache service held when it had no bundle for it (None: it
        # did not say); absent while it has one, or before it was first asked
        self._missing: dict[str, tuple[str, ...] | None] = {}
        self._channels: dict[str, dict[str, int]] = {}  # model -> cut -> channels
        self._channel = grpc.insecure_channel(
            address,
            options=[
                ("grpc.max_send_message_length", max_message_bytes),
                ("grpc.max_receive_message_length", max_message_bytes),
            ],
        )
        self._stub = cache_pb2_grpc.CacheServiceStub(self._channel)
        self._was_connected = False
        self._start_relay()
        self._threads = [
            threading.Thread(target=self._supervise, name="cache-relay", daemon=True),
            threading.Thread(target=self._plan_loop, name="cache-plan", daemon=True),
        ]
        for t in self._threads:
            t.start()
            metrics.threads.watch(t.name, t)  # health turns NOT_SERVING if one ends

    # --- request path ------------------------------------------------------------------
    def plan(self, model: str) -> ActivePlan | None:
        """The plan to use now, or None when there is none or the service is unreachable."""
        if not self.connected:
            return None
        return self._plans.get(model)

    @property
    def connected(self) -> bool:
        return bool(self.handoff.status[CONNECTED]) and self._pipe_w is not None

    def lookup(
        self,
        request_id: bytes,
        model: str,
        layer: str,
        stage: int,
        activation: torch.Tensor,
        reduction: str,
        rows: np.ndarray,
        version: int,
    ) -> PendingLookup | None:
        """Hand one lookup of `activation` [rows, C, H, W] to the relay; never blocks. None
        (and counted) when it could not be handed over: the request goes on without it.
        `rows`: int32 batch row ids; `request_id` at most MAX_REQUEST_ID_BYTES."""
        route = self._routes.get((model, stage, reduction, len(rows)))
        if route is None or activation.shape != route.shape:
            route = self._route(model, layer, stage, reduction, activation)
            if route is None:
                return None
        h = self.handoff
        with self._lock:
            seq = next(self._seq)
            if seq - int(h.status[CONSUMED]) > h.arena_slots or self._pipe_w is None:
                self._metrics.lookups_dropped.labels("backlog").inc()
                return None
            slot = route.views[seq % h.arena_slots]
            if route.memory_format is None:
                np.copyto(slot, reduce(activation, reduction).numpy())
            else:  # the slot view has the activation's strides: one memory-order copy
                np.copyto(slot, activation.numpy())
            head = Frame.HEAD.pack(LOOKUP, seq, version, *route.head, len(request_id))
            try:
                os.write(self._pipe_w, head + request_id + rows.tobytes())
            except (BlockingIOError, BrokenPipeError):
                self._metrics.lookups_dropped.labels("relay").inc()
                return None
        route.counter.inc()
        return PendingLookup(h, seq, model, layer, stage, rows)

    def label(self, request_id: bytes, model: str, rows: np.ndarray, labels: np.ndarray) -> bool:
        """Hand the base model's `labels` for batch `rows` (both int32) of a request that sent
        lookups to the relay, which sends them on the Lookup stream so the cache service can
        file that request's activations under them. One pipe write (more only for a batch over
        a frame's rows), no seq and no arena slot, so lookups' slot accounting is untouched;
        never blocks. False (and counted) when it could not be handed over."""
        n = len(rows)
        if len(labels) != n:
            raise ValueError(f"{len(labels)} labels for {n} rows")
        if not n:
            return True
        if not self.handoff.status[CONNECTED]:  # the relay would drop it: do not write at all
            self._metrics.labels_dropped.labels("down").inc()
            return False
        index = self._model_index[model]
        rid = request_id[:MAX_REQUEST_ID_BYTES]
        rows, labels = np.asarray(rows, "<i4"), np.asarray(labels, "<i4")  # no copy if int32
        step, sent = self._label_rows, 0
        with self._lock:  # guards the pipe fd, which the supervisor closes and replaces
            try:
                for at in range(0, n, step):
                    k = min(step, n - at)
                    head = Frame.HEAD.pack(LABELS, 0, 0, k, index, 0, 0, 0, 0, 0, 0, len(rid))
                    if self._pipe_w is None:
                        raise BrokenPipeError
                    body = rows[at : at + k].tobytes() + labels[at : at + k].tobytes()
                    os.write(self._pipe_w, head + rid + body)
                    sent += 1
            except (BlockingIOError, BrokenPipeError):
                self._metrics.labels_dropped.labels("relay").inc()
                return False
            finally:
                if sent:
                    self._labels_sent[model].inc(sent)
        return True

    def _route(
        self, model: str, layer: str, stage: int, reduction: str, activation: torch.Tensor
    ) -> _Route | None:
        """Work out (and keep) how this kind of lookup is sent: the raw activation when the
        relay can pool it exactly and it fits a slot, else reduced here."""
        n = activation.shape[0]
        h = self.handoff
        if n > self._max_rows:
            self._metrics.lookups_dropped.labels("rows").inc()
            return None
        g = grid(reduction)
        index = self._model_index[model]
        raw = (
            activation.dim() == 4
            and activation.dtype == torch.float32
            and activation.device.type == "cpu"
            and activation.shape[2] % g == 0
            and activation.shape[3] % g == 0
            and activation.numel() * 4 <= h.arena_slot_bytes
        )
        slots = range(h.arena_slots)
        fmt: torch.memory_format | None
        if not raw:
            c = reduce(activation[:1], reduction).shape[1]
            if n * c * 4 > h.arena_slot_bytes:
                self._metrics.lookups_dropped.labels("rows").inc()
                return None
            fmt, head = None, (n, index, stage, 0, NCHW, c, 1, 1)
            views = [h.arena[k, : n * c].reshape(n, c) for k in slots]
        else:
            _, c, hh, ww = activation.shape
            size = n * c * hh * ww
            nhwc = (
                activation.is_contiguous(memory_format=torch.channels_last)
                and not activation.is_contiguous()
            )
            if nhwc:  # a network fed NHWC images runs channels-last: copy it as it lies
                fmt, head = torch.channels_last, (n, index, stage, g, NHWC, c, hh, ww)
                views = [
                    h.arena[k, :size].reshape(n, hh, ww, c).transpose(0, 3, 1, 2) for k in slots
                ]
            else:
                fmt, head = torch.contiguous_format, (n, index, stage, g, NCHW, c, hh, ww)
                views = [h.arena[k, :size].reshape(n, c, hh, ww) for k in slots]
        counter = self._metrics.lookups.labels(model, layer)
        route = _Route(head, activation.shape, fmt, views, counter)
        self._routes[(model, stage, reduction, n)] = route
        return route

    def note_reply(self, p: PendingLookup, stage: int) -> None:
        """A reply first seen after `stage`: its round trip, how many stages late it was, and
        whether it names a bundle newer than the plan (then fetch the plan at once)."""
        self._metrics.lookup_rtt.observe(max(p.replied_at - p.sent_at, 0.0))
        self._metrics.lookup_reply_stages.observe(stage - p.stage)
        plan = self._plans.get(p.model)
        if plan is not None and p.reply is not None and p.reply.version != plan.version:
            self._plan_wakeup.set()

    def replies(self) -> int:
        """How many replies the relay has made usable so far. The engine looks at its
        pending lookups only when this moved: one read of shared memory per stage instead of
        a poll of every lookup (measured: 17 us a poll, ~9 polls a request before)."""
        return int(self.handoff.status[REPLIED])

    @staticmethod
    def unanswered(pendings: list[PendingLookup]) -> int:
        """How many of a finished request's lookups had no reply in time."""
        return sum(1 for p in pendings if p.reply is None)

    # --- relay process ---------------------------------------------------------------------
    def _start_relay(self) -> None:
        read_fd, write_fd = os.pipe()
        if hasattr(fcntl, "F_SETPIPE_SZ"):
            with contextlib.suppress(OSError):  # a lower system limit: the default size works
                fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        os.set_blocking(write_fd, False)
        with self._lock:  # no lookup goes out until the new relay's pipe is in place
            self.handoff.reset()
            self._seq = itertools.count(1)
        spec = RelaySpec(
            address=self.address,
            models=list(self._models),
            cuts=[list(m.cut_names) for m in self._models.values()],
            handoff_fd=self.handoff.fd,
            pipe_fd=read_fd,
            slots=self.handoff.slots,
            max_rows=self.handoff.max_rows,
            arena_slots=self.handoff.arena_slots,
            arena_slot_bytes=self.handoff.arena_slot_bytes,
            max_message_bytes=self._max_message_bytes,
            cpus=self._relay_cpus,
            log_level=logging.getLevelName(logging.getLogger().getEffectiveLevel()),
        )
        try:
            self._relay = subprocess.Popen(
                [sys.executable, "-m", "services.inference.relay", spec.to_json()],
                pass_fds=(self.handoff.fd, read_fd),
                stdin=subprocess.DEVNULL,
            )
        except BaseException:  # the supervisor tries again: leak no pipe on the way
            os.close(write_fd)
            raise
        finally:
            os.close(read_fd)
        with self._lock:
            self._pipe_w = write_fd

    def _supervise(self) -> None:
        """Wait on the relay; start it again (with backoff) if it exits while we run."""
        backoff = Backoff(0.2, 5.0)
        while not self._closed.is_set():
            try:
                relay = self._relay
                assert relay is not None
                while not self._closed.is_set():
                    try:
                        code = relay.wait(timeout=0.25)
                        break
                    except subprocess.TimeoutExpired:
                        self._note_connection()
                else:
                    return
                with self._lock:
                    if self._pipe_w is not None:  # None: the last start failed half way
                        os.close(self._pipe_w)
                    self._pipe_w = None
                self.handoff.status[CONNECTED] = 0
                self._metrics.relay_restarts.inc()
                log.error("lookup relay exited with %s; starting it again", code)
                if self._closed.wait(backoff.next()):
                    return
                self._start_relay()
            except Exception:  # e.g. no pipe or process could be made: try again later
                self._metrics.threads.error("cache-relay")
                log.exception("lookup relay supervision failed; trying again")
                if self._closed.wait(backoff.next()):
                    return

    def _note_connection(self) -> None:
        connected = self.connected
        if connected and not self._was_connected:
            self._metrics.cache_reconnects.inc()
            self._plan_wakeup.set()
        self._was_connected = connected

    # --- plans ---------------------------------------------------------------------------
    def _plan_loop(self) -> None:
        while not self._closed.is_set():
            self._plan_wakeup.wait(self._refresh)
            self._plan_wakeup.clear()
            if self._closed.is_set() or not self.connected:
                continue
            try:
                self.refresh_plans()
            except Exception:  # a reply we cannot read: keep the plans held, ask again
                self._metrics.threads.error("cache-plan")
                log.exception("plan refresh failed; keeping the plans held, trying again")

    def refresh_plans(self) -> None:
        """Re-read every model's plan now (the plan loop, on its timer or when woken)."""
        for name in self._models:
            self._refresh_plan(name)

    def _refresh_plan(self, name: str) -> None:
        request = cache_pb2.PlanRequest(
            model=name, model_fingerprint=self._models[name].fingerprint()
        )
        try:
            reply = self._stub.GetPlan(request, timeout=2.0)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                self._note_missing(name, held_models(exc))
                self._set_plan(name, None)
            return
        self._note_found(name)
        self._set_plan(name, self._validate(name, reply))

    def _note_missing(self, name: str, held: tuple[str, ...] | None) -> None:
        """The cache service has no bundle for `name`: say so once (and again when what it
        holds changes), with the names it does hold, since the likeliest cause is a bundle
        published under another name than the one served here."""
        if name in self._missing and self._missing[name] == held:
            return
        self._forget_held(name)
        self._missing[name] = held
        self._metrics.bundle_missing.labels(name).set(1)
        for other in held or ():
            self._metrics.cache_holds.labels(name, other).set(1)
        if held is None:
            holds = "it did not say which models it holds"
        else:
            holds = f"it holds bundles for: {', '.join(held) or 'none'}"
        log.warning(
            "model %s: the cache service at %s has no bundle for this name (%s); serving the "
            "full model. Publish a bundle under this name (gati probes publish --model %s) or "
            "serve the model under the name its bundle is published as",
            name,
            self.address,
            holds,
            name,
        )

    def _note_found(self, name: str) -> None:
        if name in self._missing:
            log.info("model %s: the cache service now has a bundle for this name", name)
            self._forget_held(name)
            del self._missing[name]
            self._metrics.bundle_missing.labels(name).set(0)

    def _forget_held(self, name: str) -> None:
        """Drop the held-names series last exported for `name` (what is held changed)."""
        for other in self._missing.get(name) or ():
            with contextlib.suppress(KeyError):
                self._metrics.cache_holds.remove(name, other)

    def missing(self) -> dict[str, tuple[str, ...] | None]:
        """model -> names the cache service held when it had no bundle for it (None: not
        said), for every served model it last answered NOT_FOUND for."""
        return dict(self._missing)

    def _validate(self, name: str, plan: cache_pb2.Plan) -> ActivePlan | None:
        model = self._models[name]
        channels = self._channels.get(name)
        if channels is None:  # one forward pass, the first time a plan comes
            channels = self._channels[name] = {c: s[0] for c, s in model.cut_shapes().items()}
        active, refusal = check_plan(name, model, channels, plan)
        if refusal is not None:
            self._refuse(name, *refusal)
        return active

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
        for t in self._threads:
            t.join(timeout=2)
        with self._lock:
            if self._pipe_w is not None:
                os.close(self._pipe_w)  # the relay sees EOF and exits
                self._pipe_w = None
        if self._relay is not None:
            try:
                self._relay.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self._relay.kill()
                self._relay.wait()
        self._channel.close()
        self.handoff.close()


def held_models(exc: grpc.RpcError) -> tuple[str, ...] | None:
    """The models a NOT_FOUND GetPlan says the cache service holds; None when it did not
    say (a cache service older than PlanNotFound) or said it in a form we cannot read."""
    trailing = getattr(exc, "trailing_metadata", None)
    for key, value in (trailing() if callable(trailing) else None) or ():
        if key == names.PLAN_NOT_FOUND_KEY and isinstance(value, bytes):
            try:
                return tuple(cache_pb2.PlanNotFound.FromString(value).held_models)
            except DecodeError:  # never let a bad trailer stop the plan loop
                return None
    return None


def check_plan(
    name: str, model: StagedModel, channels: dict[str, int], plan: cache_pb2.Plan
) -> tuple[ActivePlan | None, tuple[str, str] | None]:
    """(the plan to use, None) or (None, (reason, message)) when it does not fit `model`:
    fitted to other weights, an unknown layer or reduction, or a probe that reads another
    width than the model's cut gives (`channels`: cut -> channels)."""
    if plan.model_fingerprint != model.fingerprint():
        return None, (
            "fingerprint",
            f"bundle v{plan.bundle_version} was fitted to "
            f"{plan.model_fingerprint[:12]}, this model is {model.fingerprint()[:12]}",
        )
    layers: dict[int, tuple[str, str]] = {}
    for lp in plan.layers:
        if lp.layer not in model.cut_names or lp.reduction not in REDUCTIONS:
            return None, (
                "layer",
                f"unknown layer {lp.layer!r} or reduction {lp.reduction!r} "
                f"in bundle v{plan.bundle_version}",
            )
        width = channels[lp.layer] * grid(lp.reduction) ** 2
        if lp.input_dim and lp.input_dim != width:  # e.g. a bundle resealed with a wrong probe
            return None, (
                "width",
                f"layer {lp.layer!r} of bundle v{plan.bundle_version} reads {lp.input_dim} "
                f"values; this model's cut gives {width} at {lp.reduction}",
            )
        layers[model.cut_index(lp.layer)] = (lp.layer, lp.reduction)
    return ActivePlan(name, plan.bundle_version, layers, plan.live_labels), None


def round_trip_ms(lookups: list[PendingLookup], now: float) -> float:
    """Mean send-to-reply time of a request's lookups, in ms; a reply still out counts with
    the time it has waited so far (a lower bound, so late replies are not simply ignored)."""
    if not lookups:
        return 0.0
    waits = [(p.replied_at or now) - p.sent_at for p in lookups]
    return 1000.0 * sum(waits) / len(waits)
