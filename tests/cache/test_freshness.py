"""Freshness: the sync-age gauge, and health that turns NOT_SERVING past the bound and back."""

from __future__ import annotations

import threading
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gati import names
from gati.api import cache_pb2, cache_pb2_grpc
from gati.config import ConfigError
from gati.local.ports import free_port
from gati.local.processes import start_redis
from gati.store import BundleStore
from services.cache.config import CacheConfig
from services.cache.refresher import FreshnessGuard
from tests.cache.helpers import MODEL, Stream, lookup_request, make_bundle, sample, wait_until

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
AGE = "gati_cache_bundle_sync_age_seconds"


class FakeHandle:
    """A server handle that records what readiness was set to (as the real one, it consults
    `failing` and `unready` before saying SERVING)."""

    def __init__(self, failing: list[str] | None = None) -> None:
        self.failing = lambda: list(failing or [])
        self.unready = lambda: []
        self.stopped = threading.Event()
        self.serving: list[bool] = []

    def set_serving(self, serving: bool = True) -> None:
        self.serving.append(serving and not self.failing() and not self.unready())


def test_the_guard_flips_health_on_a_change_only_and_keeps_others_reasons() -> None:
    age = [0.0]
    handle = FakeHandle()
    guard = FreshnessGuard(lambda: age[0], max_age_s=10.0)
    guard.guard(handle)
    try:
        assert handle.unready() == [] and guard._check(handle, False) is False
        age[0] = 10.5
        assert "no bundle sync with Redis for 10.5s (bound 10s)" in handle.unready()
        assert handle.failing() == []  # liveness: a restart would not bring Redis back
        assert guard._check(handle, False) is True and handle.serving == [False]
        assert guard._check(handle, True) is True and handle.serving == [False]  # no repeat
        age[0] = 0.1  # a sync succeeded
        assert guard._check(handle, True) is False and handle.serving == [False, True]
    finally:
        guard.close()


def test_freshness_never_overrides_another_reason_to_be_off() -> None:
    handle = FakeHandle(failing=["bundle-sync"])  # liveness: a dead thread
    guard = FreshnessGuard(lambda: 0.0, max_age_s=10.0)
    guard.guard(handle)
    try:
        assert handle.failing() == ["bundle-sync"]
        assert guard._check(handle, True) is False and handle.serving == [False]
    finally:
        guard.close()


def test_a_bound_of_zero_disables_the_guard() -> None:
    handle = FakeHandle()
    before = handle.unready
    guard = FreshnessGuard(lambda: 1e9, max_age_s=0.0)
    guard.guard(handle)
    assert guard.stale() == [] and handle.unready is before and guard._thread is None
    guard.close()


def test_the_setting_defaults_generous_and_must_exceed_the_refresh_period() -> None:
    assert CacheConfig().max_sync_age_seconds == 300.0
    assert CacheConfig(max_sync_age_seconds=0).max_sync_age_seconds == 0
    with pytest.raises(ConfigError, match="max_sync_age_seconds: must exceed refresh_seconds"):
        CacheConfig(refresh_seconds=5.0, max_sync_age_seconds=5.0)


def health(channel: grpc.Channel, service: str = names.HEALTH_CACHE) -> int:
    """The readiness probe reads the service name; the liveness probe reads ""."""
    stub = health_pb2_grpc.HealthStub(channel)
    request = health_pb2.HealthCheckRequest(service=service)
    return stub.Check(request, timeout=5).status


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
