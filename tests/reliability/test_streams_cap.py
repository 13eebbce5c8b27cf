"""Lookup streams past the live cache service's cap are refused; the service keeps answering.

A cache service takes at most `max_streams` Lookup streams at once (one per inference process
is the design), so a client that opens streams without end cannot hold its capacity. This
opens streams up to the cap and a few more, on top of the one the inference service holds:
each one beyond must get RESOURCE_EXHAUSTED (counted in `gati_cache_lookup_streams_refused`),
while health, GetPlan, lookups on a stream already open and the inference service's own
lookups still answer. The lookup round trip on an open stream is measured before and while
the cap holds and printed; it is not asserted (two busy cores), only that it answers. Closing
the streams gives the capacity back.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter

import grpc

from gati import names
from gati.api import cache_pb2, cache_pb2_grpc
from services.cache.config import CacheConfig
from tests.reliability.load import wait_until
from tests.reliability.rig import CACHE_ARGS, MODEL, LookupStream, Rig, lookup_request

CAP = (
    int(CACHE_ARGS[CACHE_ARGS.index("--max-streams") + 1])
    if "--max-streams" in CACHE_ARGS
    else CacheConfig().max_streams
)
EXTRA = 4  # streams tried beyond the cap
ROUND_TRIPS = 50  # lookups timed on one open stream, before and while the cap holds


def _gauge(rig: Rig, name: str) -> float:
    return rig.metrics("cache").get(name)


def _lookup(rig: Rig) -> cache_pb2.LookupRequest:
    with grpc.insecure_channel(f"127.0.0.1:{rig.stack.cache_port}") as channel:
        plan = cache_pb2_grpc.CacheServiceStub(channel).GetPlan(
            cache_pb2.PlanRequest(model=MODEL), timeout=5
        )
    return lookup_request(plan.layers[0].layer, plan.layers[0].reduction, request_id="cap")


def _round_trips(stream: LookupStream, request: cache_pb2.LookupRequest) -> list[float]:
    """Milliseconds of ROUND_TRIPS lookups one after another; each must be answered cleanly."""
    out = []
    for _ in range(ROUND_TRIPS):
        start = time.perf_counter()
        reply = stream.ask(request)
        out.append((time.perf_counter() - start) * 1000)
        assert reply.error == "", reply.error
    return out


def _ms(samples: list[float]) -> str:
    p90 = statistics.quantiles(samples, n=10)[-1]
    return f"median {statistics.median(samples):.2f} ms (p90 {p90:.2f})"


def test_streams_beyond_the_cap_are_refused_while_the_service_answers(rig: Rig) -> None:
    version = rig.plan()[0]
    request = _lookup(rig)
    refused_before = _gauge(rig, "gati_cache_lookup_streams_refused_total")
    held: list[LookupStream] = []
    codes: Counter[str] = Counter()
    with grpc.insecure_channel(f"127.0.0.1:{rig.stack.cache_port}") as channel:
        probe = LookupStream(channel)
        try:
            before = _round_trips(probe, request)
            open_before = int(_gauge(rig, "gati_cache_lookup_streams"))  # ours + inference's
            assert 1 <= open_before < CAP, open_before
            for _ in range(CAP - open_before + EXTRA):
                stream = LookupStream(channel)
                try:
                    assert stream.ask(request).error == ""
                except grpc.RpcError as exc:
                    codes[exc.code().name] += 1
                    stream.end()
                else:
                    held.append(stream)
            at_cap = int(_gauge(rig, "gati_cache_lookup_streams"))
            refused = _gauge(rig, "gati_cache_lookup_streams_refused_total") - refused_before
            # while the cap holds: everything already open, and everything else, answers
            during = _round_trips(probe, request)
            assert held[0].ask(request).error == ""
            healthy = rig.healthy("cache")
            plan_version = rig.plan()[0]
            served = rig.ask(caches=True).parameters[names.PARAM_BUNDLE_VERSION].int64_param
        finally:
            for stream in [*held, probe]:
                stream.end()
    rig.figures.streams_cap = (
        f"streams refused by the cap: {sum(codes.values())} of {EXTRA} tried beyond "
        f"max_streams {CAP} ({', '.join(f'{k} {v}' for k, v in codes.items()) or 'none'}), "
        f"with the service still answering lookups: round trip {_ms(before)} before, "
        f"{_ms(during)} while the cap holds; meanwhile health "
        f"{'SERVING' if healthy else 'NOT SERVING'}, GetPlan v{plan_version}, requests served "
        f"with v{served}"
    )
    print(f"\n{rig.figures.streams_cap}")
    assert codes == Counter({"RESOURCE_EXHAUSTED": EXTRA}), codes
    assert len(held) == CAP - open_before and at_cap == CAP, (len(held), at_cap)
    assert refused == EXTRA
    assert healthy and plan_version == version and served == version
    # closing them gives the capacity back: a new stream is taken again
    wait_until(
        lambda: _gauge(rig, "gati_cache_lookup_streams") <= open_before - 1, 30, "streams closed"
    )
    with grpc.insecure_channel(f"127.0.0.1:{rig.stack.cache_port}") as channel:
        again = LookupStream(channel)
        try:
            assert again.ask(request).error == ""
        finally:
            again.end()
