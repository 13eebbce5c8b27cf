"""gati.v1 CacheService servicer: proto in, engine call, proto out. No probe logic here.

One bad lookup is answered with `error` set and the stream goes on: a stream carries every
lookup of an inference process, so aborting it would cost every request in flight.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

from gati.api import cache_pb2, cache_pb2_grpc
from services.cache.codec import (
    decode_lookup,
    encode_plan,
    encode_reply,
    encode_status,
    error_reply,
)
from services.cache.lookups import LookupEngine, LookupRejected
from services.common.status import grpc_errors

log = logging.getLogger(__name__)


class CacheServicer(cache_pb2_grpc.CacheServiceServicer):
    def __init__(self, engine: LookupEngine) -> None:
        self.engine = engine

    def Lookup(
        self, request_iterator: Iterator[cache_pb2.LookupRequest], context
    ) -> Iterator[cache_pb2.LookupReply]:
        for request in request_iterator:
            yield self._answer(request)

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

    @grpc_errors
    def GetPlan(self, request: cache_pb2.PlanRequest, context) -> cache_pb2.Plan:
        return encode_plan(request.model, self.engine.plan(request.model))

    @grpc_errors
    def Status(self, request: cache_pb2.StatusRequest, context) -> cache_pb2.StatusReply:
        return encode_status(self.engine.summary())
