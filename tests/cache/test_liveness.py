"""The cache service's background threads: an unexpected error is counted and the loop goes
on; a thread that dies anyway turns health NOT_SERVING and shows in `gati status`.

Real Redis and a real in-process cache service; errors are injected by replacing one method
of the running refresher (a test hook), the threads themselves are the service's own.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest

from gati import names
from gati.api import cache_pb2, cache_pb2_grpc
from gati.store import Announcement, BundleStore
from services.cache.server import CacheServer
from tests.cache.helpers import MODEL, make_bundle
from tests.liveness_checks import freshness_line, health, sample, status_row, wait_for


def plan_version(server: CacheServer) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = cache_pb2_grpc.CacheServiceStub(channel)
        try:
            return stub.GetPlan(cache_pb2.PlanRequest(model=MODEL), timeout=5).bundle_version
        except grpc.RpcError:
            return 0


def errors(server: CacheServer, thread: str) -> float:
    return sample(server.metrics.registry, "gati_background_errors_total", thread=thread) or 0.0


@pytest.fixture
def cache(store: BundleStore, start_cache: Callable[..., CacheServer]) -> CacheServer:
    store.publish(make_bundle(seed=1))
    return start_cache(metrics_port=0, refresh_seconds=0.2)


def test_sync_loop_counts_an_unexpected_error_and_goes_on(
    store: BundleStore, cache: CacheServer
) -> None:
    refresher = cache.refresher
    assert plan_version(cache) == 1
    assert errors(cache, "bundle-sync") == 0

    def broken() -> bool:
        raise ValueError("not what a sync expects")

    refresher.sync_once = broken  # type: ignore[method-assign]
    wait_for(lambda: errors(cache, "bundle-sync") >= 2, "two failed syncs counted")
    del refresher.sync_once  # the real one again: the same thread picks it up
    assert store.publish(make_bundle(seed=2)) == 2
    wait_for(lambda: plan_version(cache) == 2, "the next bundle followed")
    assert health(cache.port, names.HEALTH_CACHE) == "SERVING"
    assert sample(cache.metrics.registry, "gati_thread_alive", thread="bundle-sync") == 1.0


def test_listener_counts_an_unexpected_error_and_goes_on(
    store: BundleStore, cache: CacheServer
) -> None:
    refresher = cache.refresher
    handled: list[bytes] = []
    real = refresher._on_announcement

    def first_fails(data: bytes) -> None:
        handled.append(data)
        if len(handled) == 1:
            raise KeyError("not what a handler expects")
        real(data)

    refresher._on_announcement = first_fails  # type: ignore[method-assign]
    wait_for(lambda: store.client.pubsub_numsub(names.BUNDLE_CHANNEL)[0][1] >= 1, "subscribed")
    store.client.publish(names.BUNDLE_CHANNEL, Announcement(MODEL, 7).to_json())
    wait_for(lambda: errors(cache, "bundle-listen") == 1, "the failed announcement counted")
    store.client.publish(names.BUNDLE_CHANNEL, Announcement(MODEL, 8).to_json())
    wait_for(lambda: len(handled) == 2, "the next announcement handled by the same thread")
    assert errors(cache, "bundle-listen") == 1

    # Failing to subscribe again after the connection dropped: counted, and retried.
    subscribes: list[int] = []
    real_subscribe = refresher.store.subscribe

    def first_subscribe_fails():
        subscribes.append(1)
        if len(subscribes) == 1:
            raise TypeError("not what subscribing expects")
        return real_subscribe()

    refresher.store.subscribe = first_subscribe_fails  # type: ignore[method-assign]
    assert store.client.client_kill_filter(_type="pubsub") >= 1  # Redis drops the listener
    wait_for(lambda: errors(cache, "bundle-listen") == 2, "the failed subscribe counted")
    wait_for(lambda: len(subscribes) == 2, "subscribed again")
    wait_for(lambda: store.client.pubsub_numsub(names.BUNDLE_CHANNEL)[0][1] >= 1, "listening")
    store.client.publish(names.BUNDLE_CHANNEL, Announcement(MODEL, 9).to_json())
    wait_for(lambda: len(handled) == 3, "announcements handled again")
    assert sample(cache.metrics.registry, "gati_thread_alive", thread="bundle-listen") == 1.0
    assert health(cache.port, names.HEALTH_CACHE) == "SERVING"


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_dead_sync_thread_turns_health_off_and_status_says_which(
    store: BundleStore, cache: CacheServer
) -> None:
    assert cache.metrics_port is not None
    row = status_row("cache", cache.port, cache.metrics_port, names.HEALTH_CACHE)
    assert row.ok and row.health == "SERVING" and row.dead_threads == []
    assert row.freshness["bundles"] == {MODEL: 1}
    assert row.freshness["sync_age_seconds"] is not None
    assert f"bundles {MODEL} v1, synced " in freshness_line(row)
    assert freshness_line(row).endswith(" -")  # no dead thread

    def exits() -> bool:
        raise SystemExit  # ends a thread without a word: what the liveness watcher is for

    cache.refresher.sync_once = exits  # type: ignore[method-assign]
    cache.refresher.wake()
    wait_for(lambda: health(cache.port, names.HEALTH_CACHE) == "NOT_SERVING", "health off")
    registry = cache.metrics.registry
    assert sample(registry, "gati_thread_alive", thread="bundle-sync") == 0.0
    assert sample(registry, "gati_thread_alive", thread="bundle-listen") == 1.0
    cache.handle.set_serving(True)  # nothing turns it back on while the thread is dead
    assert health(cache.port, names.HEALTH_CACHE) == "NOT_SERVING"

    row = status_row("cache", cache.port, cache.metrics_port, names.HEALTH_CACHE)
    assert not row.ok and row.dead_threads == ["bundle-sync"]
    assert row.health == "NOT_SERVING" and freshness_line(row).endswith(" bundle-sync")
