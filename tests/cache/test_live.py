"""The live memory: a recurrence answered on a later sighting once labelled, over real gRPC
from a bundle in real Redis; a novel input not; bounds, expiry, unknown labels, a restart."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from gati.api import cache_pb2, cache_pb2_grpc
from gati.probes.serving.live import LiveRule
from gati.store import BundleStore
from services.cache.live import LiveStore
from services.cache.metrics import CacheMetrics
from tests.cache.helpers import MODEL, Stream, lookup_request, make_bundle, sample, with_live

LAYER, DIM = "layer1.2", 16  # a linear probe on pool1 of 16 channels


def labelled(request_id: str, label: int) -> cache_pb2.LookupRequest:
    return cache_pb2.LookupRequest(request_id=request_id, model=MODEL, rows=[0], labels=[label])


@pytest.fixture
def x0() -> np.ndarray:
    return np.random.default_rng(3).normal(size=(1, DIM)).astype(np.float32)


def sightings(stream: Stream, x: np.ndarray, n: int, label: int, tag: str, seed: int = 0) -> list:
    """`n` perturbed sightings of x, each labelled after its lookup; their replies."""
    rng = np.random.default_rng(seed)
    replies = []
    for i in range(n):
        noisy = x + rng.normal(scale=0.01, size=x.shape).astype(np.float32)
        replies.append(stream.ask(lookup_request(i, LAYER, noisy, request_id=f"{tag}{i}")))
        stream.send(labelled(f"{tag}{i}", label))  # no reply: the next ask gets its own
    return replies


def test_a_recurrence_hits_once_k_sightings_are_labelled_and_a_novel_input_does_not(
    store: BundleStore, start_cache, x0: np.ndarray
) -> None:
    store.publish(with_live(make_bundle(seed=1), LAYER, k=3, radius=0.1))
    server = start_cache()
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stream = Stream(channel)
        first = sightings(stream, x0, 3, label=7, tag="a")
        later = sightings(stream, x0, 2, label=7, tag="b", seed=1)
        novel = stream.ask(lookup_request(9, LAYER, x0 + 3.0, request_id="novel"))
        stream.send(labelled("never-looked-up", 7))
        stream.ask(lookup_request(10, LAYER, x0 + 3.0, request_id="sync"))  # after the label
        stream.close()
    assert [list(r.hit) for r in first] == [[False]] * 3  # fewer than k remembered yet
    assert [(list(r.hit), list(r.label)) for r in later] == [([True], [7])] * 2
    assert list(novel.hit) == [False]  # far from everything remembered
    m = server.metrics
    assert sample(m, "gati_cache_live_hits_total", model=MODEL, layer=LAYER) == 2
    assert sample(m, "gati_cache_live_labels_total", outcome="filed") == 5
    assert sample(m, "gati_cache_live_labels_total", outcome="unknown") == 1
    assert sample(m, "gati_cache_live_rows", model=MODEL, layer=LAYER) == 5


def test_a_rule_with_radius_zero_never_answers(
    store: BundleStore, start_cache, x0: np.ndarray
) -> None:
    store.publish(with_live(make_bundle(seed=1), LAYER, k=1, radius=0.0))
    server = start_cache()
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stream = Stream(channel)
        replies = sightings(stream, x0, 4, label=2, tag="z")
        stream.close()
    assert not any(r.hit[0] for r in replies)
    assert sample(server.metrics, "gati_cache_live_hits_total", model=MODEL, layer=LAYER) == 0


def test_a_restarted_replica_starts_empty_and_relearns(
    store: BundleStore, start_cache, x0: np.ndarray
) -> None:
    store.publish(with_live(make_bundle(seed=1), LAYER, k=1, radius=0.1))
    for attempt in range(2):  # the second service is the first one restarted
        server = start_cache()
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stream = Stream(channel)
            replies = sightings(stream, x0, 2, label=4, tag=f"r{attempt}-")
            stream.close()
        assert [list(r.hit) for r in replies] == [[False], [True]], attempt
        server.stop(0)


def test_bad_label_messages_are_counted_and_the_stream_goes_on(
    store: BundleStore, start_cache, x0: np.ndarray
) -> None:
    store.publish(with_live(make_bundle(seed=1), LAYER, k=1, radius=0.1))
    server = start_cache()
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stream = Stream(channel)
        stream.ask(lookup_request(1, LAYER, x0, request_id="q"))
        stream.send(cache_pb2.LookupRequest(request_id="q", model=MODEL, rows=[0, 1], labels=[1]))
        stream.send(
            cache_pb2.LookupRequest(request_id="é" * 200, model=MODEL, rows=[0], labels=[1])
        )
        after = stream.ask(lookup_request(2, LAYER, x0, request_id="q2"))
        stream.close()
    assert after.error == "" and list(after.hit) == [False]  # nothing was filed
    m = server.metrics
    assert sample(m, "gati_cache_lookup_errors_total", reason="shape") == 1
    assert sample(m, "gati_cache_lookup_errors_total", reason="request_id") == 1


# ---- the store alone: bounds and expiry, on a clock of our own ---------------------------
RULE = LiveRule("pool1", 4, 1, 0.5, np.zeros(4, np.float32), np.ones(4, np.float32))


def one(value: float) -> np.ndarray:
    return np.full((1, 4), value, np.float32)


def test_rows_are_bounded_oldest_out_and_expire_with_age() -> None:
    live = LiveStore(CacheMetrics(), capacity=2, ttl_s=10.0, pending=8)
    for i, value in enumerate((0.0, 5.0, 10.0)):  # three rows into a memory of two
        live.answer(MODEL, f"r{i}", LAYER, RULE, [0], one(value), now=float(i))
        assert live.label(MODEL, f"r{i}", [0], [i], now=float(i)) == 1
    hit, label = live.answer(MODEL, "q0", LAYER, RULE, [0], one(0.0), now=3.0)
    assert not hit[0]  # the oldest row went first
    hit, label = live.answer(MODEL, "q1", LAYER, RULE, [0], one(10.0), now=3.0)
    assert hit[0] and label[0] == 2
    hit, _ = live.answer(MODEL, "q2", LAYER, RULE, [0], one(10.0), now=13.5)
    assert not hit[0]  # filed at t=2, ttl 10 s: no longer answers
    assert live.nbytes() == 2 * (4 * 4 + 8 + 8)


def test_labels_for_evicted_or_expired_requests_are_ignored_and_counted() -> None:
    metrics = CacheMetrics()
    live = LiveStore(metrics, capacity=8, ttl_s=600.0, pending=2, pending_ttl_s=5.0)
    for i in range(3):  # three requests held, room for two: r0 is evicted
        live.answer(MODEL, f"r{i}", LAYER, RULE, [0], one(i), now=0.0)
    assert live.label(MODEL, "r0", [0], [1], now=1.0) == 0
    assert live.label(MODEL, "r1", [0], [1], now=6.0) == 0  # held longer than 5 s
    assert live.label(MODEL, "r2", [0], [1], now=1.0) == 1
    assert live.label(MODEL, "r2", [0], [1], now=1.0) == 0  # filed once
    assert sample(metrics, "gati_cache_live_labels_total", outcome="unknown") == 3
    assert sample(metrics, "gati_cache_live_labels_total", outcome="filed") == 1


@pytest.mark.parametrize(
    ("radius", "rows", "wanted"), [(0.1, 1024, True), (0.0, 1024, False), (0.1, 0, False)]
)
def test_the_plan_asks_for_labels_only_where_a_live_rule_can_answer(
    store: BundleStore, start_cache, radius: float, rows: int, wanted: bool
) -> None:
    """The inference service sends labels only when told: none for a rule that is off, or
    for a service started without a live memory."""
    store.publish(with_live(make_bundle(seed=1), LAYER, k=1, radius=radius))
    server = start_cache(live_rows=rows)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        plan = cache_pb2_grpc.CacheServiceStub(channel).GetPlan(
            cache_pb2.PlanRequest(model=MODEL), timeout=10
        )
    assert plan.live_labels is wanted
