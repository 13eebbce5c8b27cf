"""Freshness: the sync-age gauge, and health that turns NOT_SERVING past the bound and back."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from gati import names
from gati.api import cache_pb2, cache_pb2_grpc
from gati.config import ConfigError
from gati.store import BundleStore
from launch.ports import free_port
from launch.processes import start_redis
from services.cache.config import CacheConfig
from services.cache.refresher import BundleRefresher, stale_reasons
from services.common.grpc_server import GrpcServer, build_server
from services.common.liveness import Liveness
from tests.cache.helpers import MODEL, Stream, lookup_request, make_bundle, sample, wait_until

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
AGE = "gati_cache_bundle_sync_age_seconds"


def health(channel: grpc.Channel, service: str = names.HEALTH_CACHE) -> int:
    """The readiness probe reads the service name; the liveness probe reads ""."""
    stub = health_pb2_grpc.HealthStub(channel)
    request = health_pb2.HealthCheckRequest(service=service)
    return stub.Check(request, timeout=5).status


def test_stale_reasons_past_the_bound_only() -> None:
    assert stale_reasons(9.9, 10.0) == []
    assert stale_reasons(10.5, 10.0) == ["no bundle sync with Redis for 10.5s (bound 10s)"]
    assert stale_reasons(1e9, 0.0) == []  # 0: never stale


@pytest.fixture
def handle() -> Iterator[GrpcServer]:
    """A real gRPC server with health, as the cache service's handle is to the watcher."""
    server, h = build_server("127.0.0.1", 0, 2, 1 << 20, (names.HEALTH_CACHE,), ())
    server.start()
    yield h
    h.stop(0)


class Refresher:
    """What `guard_health` reads of the real refresher: the sync age, here set by the test."""

    def __init__(self) -> None:
        self.age = 0.0

    def sync_age(self) -> float:
        return self.age


def test_readiness_follows_freshness_and_liveness_stays_on(handle: GrpcServer) -> None:
    refresher = Refresher()
    BundleRefresher.guard_health(refresher, handle, 10.0)  # type: ignore[arg-type]
    liveness = Liveness(CollectorRegistry(), watch_s=0.02)
    liveness.guard(handle)
    handle.set_serving(True)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{handle.port}") as channel:
            assert health(channel) == SERVING
            refresher.age = 10.5
            wait_until(lambda: health(channel) == NOT_SERVING, timeout=30.0)
            assert health(channel, "") == SERVING  # a restart would not bring Redis back
            refresher.age = 0.1  # a sync succeeded
            wait_until(lambda: health(channel) == SERVING, timeout=30.0)
    finally:
        liveness.close()


def test_freshness_never_overrides_a_dead_thread(handle: GrpcServer) -> None:
    refresher = Refresher()
    BundleRefresher.guard_health(refresher, handle, 10.0)  # type: ignore[arg-type]
    liveness = Liveness(CollectorRegistry(), watch_s=0.02)
    liveness.watch("bundle-sync", lambda: False)  # dead from the start
    liveness.guard(handle)
    handle.set_serving(True)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{handle.port}") as channel:
            assert health(channel) == NOT_SERVING and health(channel, "") == NOT_SERVING
            handle.refresh()  # fresh bundles: the dead thread alone holds health off
            assert health(channel) == NOT_SERVING and health(channel, "") == NOT_SERVING
    finally:
        liveness.close()


def test_a_bound_of_zero_adds_no_reason(handle: GrpcServer) -> None:
    before = handle.unready
    BundleRefresher.guard_health(Refresher(), handle, 0.0)  # type: ignore[arg-type]
    assert handle.unready is before


def test_the_setting_defaults_generous_and_must_exceed_the_refresh_period() -> None:
    assert CacheConfig().max_sync_age_seconds == 300.0
    assert CacheConfig(max_sync_age_seconds=0).max_sync_age_seconds == 0
    with pytest.raises(ConfigError, match="max_sync_age_seconds: must exceed refresh_seconds"):
        CacheConfig(refresh_seconds=5.0, max_sync_age_seconds=5.0)


def test_health_follows_sync_age_through_a_redis_outage(start_cache, tmp_path: Path) -> None:
    """Redis dies: the gauge grows, readiness turns NOT_SERVING past the bound while lookups
    still answer from the bundle held; Redis returns: a sync succeeds, SERVING again."""
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    redis_proc = start_redis(port, tmp_path / "r1")
    store = BundleStore(url)
    channel = None
    try:
        store.publish(make_bundle(seed=1))
        server = start_cache(
            redis_url=url,
            refresh_seconds=0.2,
            redis_backoff_max_seconds=0.3,
            max_sync_age_seconds=1.5,
        )
        channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
        assert health(channel) == SERVING
        wait_until(lambda: sample(server.metrics, AGE) < 1.5, timeout=20.0)
        redis_proc.kill()
        wait_until(lambda: sample(server.metrics, AGE) > 1.5, timeout=30.0)
        wait_until(lambda: health(channel) == NOT_SERVING, timeout=30.0)
        assert health(channel, "") == SERVING  # not restarted: that would lose the bundles
        plan = cache_pb2_grpc.CacheServiceStub(channel).GetPlan(
            cache_pb2.PlanRequest(model=MODEL), timeout=5
        )
        stream = Stream(channel)
        reply = stream.ask(lookup_request(1, "layer1.2", np.ones((1, 16), np.float32)))
        stream.close()
        assert plan.bundle_version == 1 and reply.error == "" and reply.bundle_version == 1

        redis_proc = start_redis(port, tmp_path / "r2")
        wait_until(lambda: health(channel) == SERVING, timeout=30.0)
        wait_until(lambda: sample(server.metrics, AGE) < 1.5, timeout=20.0)
    finally:
        if channel is not None:
            channel.close()
        store.close()
        redis_proc.stop()


def test_a_brief_outage_within_the_default_bound_keeps_serving(start_cache, tmp_path: Path) -> None:
    """The reliability suite stops Redis for seconds: the gauge shows it, health does not."""
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    redis_proc = start_redis(port, tmp_path / "r1")
    try:
        server = start_cache(redis_url=url, refresh_seconds=0.2, redis_backoff_max_seconds=0.3)
        redis_proc.kill()
        wait_until(lambda: sample(server.metrics, AGE) > 1.0, timeout=30.0)
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            assert health(channel) == SERVING
    finally:
        redis_proc.stop()
