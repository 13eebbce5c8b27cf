"""The cache service over real gRPC in-process (port 0) with a real bundle from real Redis."""

from __future__ import annotations

import threading

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gati import names
from gati.api import cache_pb2, cache_pb2_grpc
from gati.probes.serving.runtime import ProbeRuntime
from gati.store import BundleStore
from tests.cache.helpers import (
    DIMS,
    FINGERPRINT,
    LAYERS,
    MODEL,
    Stream,
    lookup_request,
    make_bundle,
    sample,
    wait_until,
)


@pytest.fixture
def published(store: BundleStore) -> ProbeRuntime:
    """v1 in Redis; the runtime a reference lookup runs on (the bytes the service reads)."""
    version = store.publish(make_bundle())
    return ProbeRuntime.from_bytes(store.fetch(MODEL, version))  # type: ignore[arg-type]


@pytest.fixture
def served(published, start_cache):
    server = start_cache()
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield server, channel


def test_health_plan_and_status(served) -> None:
    _, channel = served
    health = health_pb2_grpc.HealthStub(channel)
    reply = health.Check(health_pb2.HealthCheckRequest(service=names.HEALTH_CACHE))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    stub = cache_pb2_grpc.CacheServiceStub(channel)
    plan = stub.GetPlan(cache_pb2.PlanRequest(model=MODEL))
    assert plan.model == MODEL and plan.bundle_version == 1
    assert plan.model_fingerprint == FINGERPRINT
    assert [(lp.layer, lp.reduction) for lp in plan.layers] == [
        ("layer1.2", "pool1"),
        ("layer2.1", "pool2"),
        ("layer3.0", "pool4"),
    ]
    assert [lp.input_dim for lp in plan.layers] == [DIMS[lp.layer] for lp in plan.layers]
    with pytest.raises(grpc.RpcError) as err:
        stub.GetPlan(cache_pb2.PlanRequest(model="resnet99"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no bundle for model 'resnet99' (bundles held for: resnet20)" in err.value.details()
    status = stub.Status(cache_pb2.StatusRequest())
    assert [(m.model, m.bundle_version, list(m.active_layers)) for m in status.models] == [
        (MODEL, 1, list(LAYERS))
    ]
    assert status.reloads == 1 and status.bundles_refused == 0


def test_serving_without_any_bundle(start_cache) -> None:
    server = start_cache()
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = health.Check(health_pb2.HealthCheckRequest(service=names.HEALTH_CACHE))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as err:
            cache_pb2_grpc.CacheServiceStub(channel).GetPlan(cache_pb2.PlanRequest(model=MODEL))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_an_empty_bundle_is_an_empty_plan(store: BundleStore, start_cache) -> None:
    """A bundle with no active layer says "no caches pay for this model now"."""
    store.publish(make_bundle(layers={}))
    server = start_cache()
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        plan = cache_pb2_grpc.CacheServiceStub(channel).GetPlan(cache_pb2.PlanRequest(model=MODEL))
        assert (plan.bundle_version, list(plan.layers)) == (1, [])
        reply = Stream(channel).ask(lookup_request(1, "layer1.2", np.ones((1, 16))))
        assert "no active probe at layer 'layer1.2'" in reply.error and reply.bundle_version == 1


def test_lookups_answer_as_the_runtime_does(served, published: ProbeRuntime) -> None:
    """Three requests walk the cuts in order, each with 1-3 rows: the service's answers equal
    a local runtime's, including the learned selector's previous-cut evidence per row."""
    server, channel = served
    rng = np.random.default_rng(7)
    stream = Stream(channel)
    hits = total = 0
    seq = 0
    for r, rows in enumerate((1, 3, 2)):
        states = [published.new_state() for _ in range(rows)]
        for layer in LAYERS:
            x = rng.normal(0, 1, (rows, DIMS[layer])).astype(np.float32)
            seq += 1
            reply = stream.ask(lookup_request(seq, layer, x, request_id=f"q{r}", version=1))
            hit, label, conf = published.lookup(layer, x, states)
            assert (reply.seq, reply.request_id, reply.layer, reply.error) == (
                seq,
                f"q{r}",
                layer,
                "",
            )
            assert reply.bundle_version == 1
            assert list(reply.hit) == hit.tolist() and list(reply.label) == label.tolist()
            np.testing.assert_allclose(reply.confidence, conf, rtol=1e-6)
            hits += int(hit.sum())
            total += rows
    stream.close()
    assert 0 < hits < total  # both answers occurred, so the comparison meant something
    m = server.metrics
    assert sample(m, "gati_cache_lookups_total", model=MODEL, layer="layer1.2") == 3
    assert (
        sum(sample(m, "gati_cache_hits_total", model=MODEL, layer=layer) for layer in LAYERS)
        == hits
    )
    assert (
        sum(sample(m, "gati_cache_misses_total", model=MODEL, layer=layer) for layer in LAYERS)
        == total - hits
    )
    assert sample(m, "gati_cache_lookup_latency_seconds_count", model=MODEL) == 9
    assert sample(m, "gati_cache_bundle_version", model=MODEL) == 1


def bad_requests() -> list[tuple[str, cache_pb2.LookupRequest, str]]:
    ok = np.zeros((1, 16), np.float32)
    wrong_dtype = lookup_request(3, "layer1.2", ok)
    wrong_dtype.activation.dtype = "int8"
    short = lookup_request(4, "layer1.2", ok)
    short.activation.data = short.activation.data[:-4]
    flat = lookup_request(5, "layer1.2", ok)
    del flat.activation.shape[:]
    flat.activation.shape.append(16)
    rows = lookup_request(6, "layer1.2", ok)
    rows.rows.append(1)
    return [
        ("model", lookup_request(1, "layer1.2", ok, model="resnet99"), "no bundle for model"),
        ("layer", lookup_request(2, "layer9.9", ok), "no active probe at layer 'layer9.9'"),
        ("dtype", wrong_dtype, "activation dtype 'int8' is not supported"),
        ("shape", short, "needs 64 bytes, got 60"),
        ("shape", flat, "must be [rows >= 1, D >= 1]"),
        ("shape", rows, "2 row ids for an activation of 1 rows"),
        ("shape", lookup_request(7, "layer1.2", np.zeros((1, 17))), "reads 16 values per row"),
        ("nonfinite", lookup_request(8, "layer1.2", np.full((1, 16), np.nan)), "NaN"),
        # issue 14, finding 5: 100 lookups with 1 MB ids grew the service by 100 MB
        ("request_id", lookup_request(9, "layer1.2", ok, request_id="x" * 1_000_000), "256 bytes"),
    ]


def test_bad_lookups_get_errors_and_the_stream_survives(served) -> None:
    server, channel = served
    stream = Stream(channel)
    expected: dict[str, int] = {}
    for reason, request, message in bad_requests():
        reply = stream.ask(request)
        assert reply.seq == request.seq and message in reply.error, (reason, reply.error)
        assert len(reply.hit) == 0
        expected[reason] = expected.get(reason, 0) + 1
    good = stream.ask(lookup_request(99, "layer1.2", np.ones((2, 16), np.float32)))
    assert good.error == "" and len(good.hit) == 2 and good.bundle_version == 1
    stream.close()
    for reason, count in expected.items():
        assert sample(server.metrics, "gati_cache_lookup_errors_total", reason=reason) == count


def test_float16_activations_are_accepted(served, published: ProbeRuntime) -> None:
    _, channel = served
    x = np.random.default_rng(3).normal(size=(2, 16)).astype(np.float16)
    request = lookup_request(1, "layer1.2", x)
    request.activation.dtype = "float16"
    request.activation.data = x.tobytes()
    reply = Stream(channel).ask(request)
    _, label, _ = published.lookup("layer1.2", x.astype(np.float32), [published.new_state()] * 2)
    assert reply.error == "" and list(reply.label) == label.tolist()


def test_concurrent_streams_each_get_their_own_answers(store: BundleStore, start_cache) -> None:
    """Eight streams, each with 40 lookups pipelined, on one layer: every reply equals a lone
    lookup's answer and goes back on the stream that asked."""
    version = store.publish(make_bundle(layers={"layer3.0": ("conv", 64)}))
    reference = ProbeRuntime.from_bytes(store.fetch(MODEL, version))  # type: ignore[arg-type]
    server = start_cache()
    xs = np.random.default_rng(0).normal(size=(40, DIMS["layer3.0"])).astype(np.float32)
    expected = [
        reference.lookup("layer3.0", xs[i : i + 1], [reference.new_state()]) for i in range(40)
    ]
    errors: list[str] = []

    def client(c: int) -> None:
        with grpc.insecure_channel(
            f"127.0.0.1:{server.port}", options=[("grpc.use_local_subchannel_pool", 1)]
        ) as channel:
            stream = Stream(channel)
            for i in range(len(xs)):  # all in flight at once; fresh request ids, fresh states
                stream.send(lookup_request(i, "layer3.0", xs[i : i + 1], request_id=f"c{c}-{i}"))
            for i in range(len(xs)):
                reply = stream.receive()
                _, label, conf = expected[i]
                same = (reply.seq, reply.error, list(reply.label)) == (i, "", label.tolist())
                if not same or abs(reply.confidence[0] - conf[0]) > 1e-5:
                    errors.append(f"{c}/{i}: {reply}")
            stream.close()

    threads = [threading.Thread(target=client, args=(c,)) for c in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert sample(server.metrics, "gati_cache_lookups_total", model=MODEL, layer="layer3.0") == 320


def test_streams_beyond_the_cap_are_refused_and_the_service_keeps_answering(
    published: ProbeRuntime, start_cache
) -> None:
    """Idle streams hold no worker: with max_streams open and silent, a further stream gets a
    clear RESOURCE_EXHAUSTED while health, GetPlan and lookups on the open streams answer."""
    server = start_cache(max_streams=3)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        held = [Stream(channel) for _ in range(3)]
        x = np.zeros((1, DIMS["layer1.2"]), np.float32)
        assert held[0].ask(lookup_request(1, "layer1.2", x)).error == ""  # all three are open
        assert held[1].ask(lookup_request(1, "layer1.2", x)).error == ""
        assert held[2].ask(lookup_request(1, "layer1.2", x)).error == ""
        extra = Stream(channel)
        with pytest.raises(grpc.RpcError) as refused:
            extra.ask(lookup_request(1, "layer1.2", x))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_streams" in refused.value.details()
        health = health_pb2_grpc.HealthStub(channel)
        check = health.Check(health_pb2.HealthCheckRequest(service=names.HEALTH_CACHE), timeout=2)
        assert check.status == health_pb2.HealthCheckResponse.SERVING
        plan = cache_pb2_grpc.CacheServiceStub(channel).GetPlan(
            cache_pb2.PlanRequest(model=MODEL), timeout=2
        )
        assert plan.bundle_version == 1
        assert held[0].ask(lookup_request(2, "layer1.2", x)).error == ""
        assert sample(server.metrics, "gati_cache_lookup_streams_refused_total") == 1
        assert sample(server.metrics, "gati_cache_lookup_streams") == 3
        for s in held:
            s.close()


def test_a_silent_stream_is_closed_after_the_idle_time(
    published: ProbeRuntime, start_cache
) -> None:
    server = start_cache(stream_idle_seconds=0.4)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stream = Stream(channel)
        x = np.zeros((1, DIMS["layer1.2"]), np.float32)
        assert stream.ask(lookup_request(1, "layer1.2", x)).error == ""
        with pytest.raises(grpc.RpcError) as closed:  # nothing sent: the server ends it
            stream.receive()
        assert closed.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "without a lookup" in closed.value.details()
        assert sample(server.metrics, "gati_cache_lookup_streams_idle_closed_total") == 1
        wait_until(lambda: sample(server.metrics, "gati_cache_lookup_streams") == 0, timeout=10)
