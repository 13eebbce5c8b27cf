"""gati.v1 CacheService servicer (grpc.aio): proto in, engine call, proto out. No probe logic here.

Every call is answered inline on the server's event loop: a lookup is read, evaluated and its
reply written by one thread, with no hand-off (measured: a hand-off between threads costs a
wake-up, 50-150 us on the 2-core machine). One bad lookup is answered with `error` set and the
stream goes on: a stream carries every lookup of an inference process, so aborting it would
cost every request in flight.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import grpc

from gati import names
from gati.api import cache_pb2, cache_pb2_grpc
from gati.errors import GatiError, NotFound
from services.cache.codec import (
    decode_lookup,
    encode_plan,
    encode_reply,
    encode_status,
    error_reply,
)
from services.cache.lookups import LookupEngine, LookupRejected
from services.common.status import status_code

log = logging.getLogger(__name__)


class CacheServicer(cache_pb2_grpc.CacheServiceServicer):
    """Lookup streams are capped (`max_streams`, then RESOURCE_EXHAUSTED) and a stream silent
    for `idle_seconds` is closed, so no client can hold the service's capacity forever."""

    def __init__(
        self,
        engine: LookupEngine,
        max_streams: int = 64,
        idle_seconds: float = 600.0,
        note_served: Callable[[str, str], None] | None = None,
    ) -> None:
        self.engine = engine
        # (model, fingerprint) of each plan request that states one: what is served
        self.note_served = note_served or (lambda model, fingerprint: None)
        self.max_streams = max_streams
        self.idle_seconds = idle_seconds
        self._streams: dict[asyncio.Task, float] = {}  # handler -> last message (monotonic)
        self._sweeper: asyncio.Task | None = None
        self._idle: set[asyncio.Task] = set()  # handlers being closed for silence

    async def Lookup(self, request_iterator, context: grpc.aio.ServicerContext) -> None:
        metrics = self.engine.metrics
        if len(self._streams) >= self.max_streams:
            metrics.streams_refused.inc()
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{len(self._streams)} Lookup streams are open, the most this cache service "
                "takes (max_streams); one stream per inference process is enough",
            )
        task = asyncio.current_task()
        assert task is not None
        self._streams[task] = time.monotonic()
        metrics.streams_open.set(len(self._streams))
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.ensure_future(self._sweep())
        try:
            while True:
                try:
                    request = await context.read()
                except asyncio.CancelledError:
                    if task not in self._idle:
                        raise
                    await context.abort(
                        grpc.StatusCode.UNAVAILABLE,
                        f"Lookup stream closed after {self.idle_seconds:.0f}s without a lookup; "
                        "open a new one",
                    )
                if request is grpc.aio.EOF:
                    return
                self._streams[task] = time.monotonic()
                if request.labels:  # the base model's answer for a request: filed, no reply
                    self._file(request)
                    continue
                await context.write(self._answer(request))
        finally:
            self._idle.discard(task)
            del self._streams[task]
            metrics.streams_open.set(len(self._streams))

    async def _sweep(self) -> None:
        """Close streams silent for longer than idle_seconds (checked a few times per period)."""
        while self._streams:
            await asyncio.sleep(min(self.idle_seconds / 4, 5.0))
            now = time.monotonic()
            for task, last in list(self._streams.items()):
                if now - last > self.idle_seconds and not task.done():
                    self.engine.metrics.streams_idle_closed.inc()
                    log.info("closing a Lookup stream silent for %.0fs", now - last)
                    self._idle.add(task)
                    task.cancel()

    def _file(self, request: cache_pb2.LookupRequest) -> None:
        """A label message (no reply: the sender waits for none). Bad ones are counted."""
        if len(request.request_id.encode()) > names.MAX_REQUEST_ID_BYTES:
            self.engine.count_rejected("request_id")
            return
        if len(request.labels) != len(request.rows):
            self.engine.count_rejected("shape")  # one label per row id
            return
        try:
            self.engine.label(request.model, request.request_id, request.rows, request.labels)
        except Exception:  # never let one message end the stream
            log.exception("label message for %s failed", request.request_id[:64])
            self.engine.count_rejected("internal")

    def _answer(self, request: cache_pb2.LookupRequest) -> cache_pb2.LookupReply:
        arrived = time.perf_counter()
        try:
            item = decode_lookup(request, arrived)
        except LookupRejected as exc:
            self.engine.count_rejected(exc.reason)
            return error_reply(request, str(exc), self.engine.probes.version(request.model))
        try:
            return encode_reply(request, self.engine.lookup(item))
        except Exception:  # never let one lookup end the stream
            log.exception("lookup %d of %s failed", request.seq, request.request_id)
            self.engine.count_rejected("internal")
            return error_reply(request, "internal error; see the cache service log", 0)

    async def GetPlan(
        self, request: cache_pb2.PlanRequest, context: grpc.aio.ServicerContext
    ) -> cache_pb2.Plan:
        if request.model_fingerprint:
            self.note_served(request.model, request.model_fingerprint)
        try:
            runtime = self.engine.plan(request.model)
            return encode_plan(request.model, runtime, self.engine.live is not None)
        except NotFound as exc:  # say what is held, so the caller can name the mismatch
            held = cache_pb2.PlanNotFound(held_models=self.engine.probes.models())
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                str(exc),
                ((names.PLAN_NOT_FOUND_KEY, held.SerializeToString()),),
            )
            raise  # abort raises; this line is never reached
        except GatiError as exc:
            await context.abort(status_code(exc), str(exc))
            raise  # abort raises; this line is never reached

    async def Status(
        self, request: cache_pb2.StatusRequest, context: grpc.aio.ServicerContext
    ) -> cache_pb2.StatusReply:
        return encode_status(self.engine.summary())
