"""Hot reload from Redis: announcements, the timer, refusals, rollback, Redis outages."""

from __future__ import annotations

import pickle
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from gati import names
from gati.api import cache_pb2, cache_pb2_grpc
from gati.store import Announcement, BundleStore
from launch.ports import free_port
from launch.processes import start_redis
from services.cache.server import CacheServer
from tests.cache.helpers import (
    MODEL,
    Stream,
    lookup_request,
    make_bundle,
    sample,
    wait_until,
    write_raw,
)


def plan_version(stub: cache_pb2_grpc.CacheServiceStub) -> int:
    try:
        return stub.GetPlan(cache_pb2.PlanRequest(model=MODEL), timeout=2).bundle_version
    except grpc.RpcError:
        return 0


def refused(server: CacheServer, reason: str) -> float:
    return sample(server.metrics, "gati_cache_bundles_refused_total", model=MODEL, reason=reason)


class WritesMarker:
    """Unpickling this object would create `path` (code execution from a bundle)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


@pytest.fixture
def stub(store: BundleStore, start_cache):
    store.publish(make_bundle(seed=1))
    # A long timer, so what the test sees within a second came through pub/sub.
    server = start_cache(refresh_seconds=30.0)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield server, cache_pb2_grpc.CacheServiceStub(channel)


def test_publish_takes_effect_through_the_announcement(store: BundleStore, stub) -> None:
    server, s = stub
    assert plan_version(s) == 1
    delays = []
    for version in (2, 3):
        bundle = make_bundle(seed=version)
        start = time.perf_counter()
        assert store.publish(bundle) == version
        wait_until(lambda v=version: plan_version(s) == v, timeout=5.0, step=0.001)
        delays.append(time.perf_counter() - start)
    print(f"\nreload delay publish -> plan: {', '.join(f'{d * 1000:.1f} ms' for d in delays)}")
    assert sample(server.metrics, "gati_cache_reloads_total", model=MODEL) == 3
    assert sample(server.metrics, "gati_cache_bundle_version", model=MODEL) == 3


def test_corrupt_bundle_is_refused_and_the_last_good_stays(store: BundleStore, stub) -> None:
    server, s = stub
    good = make_bundle(seed=2).with_version(2).to_bytes()
    corrupt = bytearray(good)
    corrupt[-1] ^= 0xFF  # one tensor byte: the checksum no longer matches
    write_raw(store, 2, bytes(corrupt))
    wait_until(lambda: refused(server, "checksum") == 1, timeout=5.0)
    assert plan_version(s) == 1
    write_raw(store, 3, good[: len(good) // 2])  # truncated
    wait_until(lambda: refused(server, "format") == 1, timeout=5.0)
    write_raw(store, 4, make_bundle(seed=4).with_version(1).to_bytes())  # stored under 4, says 1
    wait_until(lambda: refused(server, "version") == 1, timeout=5.0)
    assert plan_version(s) == 1
    server.refresher.sync_once()  # the timer re-reads the pointer: a refusal is not repeated
    assert refused(server, "checksum") + refused(server, "format") + refused(server, "version") == 3
    assert s.Status(cache_pb2.StatusRequest()).bundles_refused == 3
    assert store.publish(make_bundle(seed=5)) == 5  # a good one after bad ones is taken
    wait_until(lambda: plan_version(s) == 5, timeout=5.0)


def test_a_fresh_start_behind_a_bad_pointer_serves_the_newest_good_version(
    store: BundleStore, start_cache
) -> None:
    """Replicas that were up keep their last good bundle; one that starts after the pointer
    moved to a bad version has none, so it takes the newest good one below the pointer."""
    store.publish(make_bundle(seed=1))
    store.publish(make_bundle(seed=2))
    write_raw(store, 3, b"not a bundle" * 10)
    server = start_cache()
    assert server.probes.version(MODEL) == 2
    assert refused(server, "format") == 1
    server.refresher.sync_once()
    assert server.probes.version(MODEL) == 2 and refused(server, "format") == 1
    store.client.set(names.bundle_key(MODEL, 2), b"also broken")  # v2 bad too: v1 it is
    assert start_cache().probes.version(MODEL) == 1


def test_a_pickle_is_refused_and_never_unpickled(store: BundleStore, stub, tmp_path) -> None:
    server, s = stub
    marker = tmp_path / "pwned"
    payload = pickle.dumps(WritesMarker(marker))
    assert not marker.exists()
    write_raw(store, 2, payload)
    wait_until(lambda: refused(server, "format") == 1, timeout=5.0)
    assert plan_version(s) == 1
    assert not marker.exists()


def test_a_hostile_announcement_leaves_the_listener_alive(store: BundleStore, stub) -> None:
    """Issue 14, finding 1: `[` * 50000 on the channel killed the listener thread with a
    RecursionError; afterwards only the 30 s timer would have seen new bundles."""
    server, s = stub
    for data in (b"[" * 50000, b"\xff\xfe", b'{"model": 1}', b"{" * 100000):
        store.client.publish(names.BUNDLE_CHANNEL, data)
    store.publish(make_bundle(seed=2))
    wait_until(lambda: plan_version(s) == 2, timeout=5.0)  # only the listener is this quick
    assert all(t.is_alive() for t in server.refresher._threads)


def test_a_garbage_pointer_is_refused_and_the_next_good_bundle_taken(
    store: BundleStore, stub
) -> None:
    """Issue 14, finding 2: pointer "abc" killed the sync thread; a good bundle published after
    it was never picked up while health said SERVING."""
    server, s = stub
    store.client.set(names.bundle_pointer_key(MODEL), "abc")
    store.client.publish(names.BUNDLE_CHANNEL, Announcement(MODEL, 2).to_json())
    wait_until(lambda: refused(server, "pointer") == 1, timeout=5.0)
    server.refresher.sync_once()  # the same bad pointer again: refused once, not per sync
    assert refused(server, "pointer") == 1 and plan_version(s) == 1
    assert all(t.is_alive() for t in server.refresher._threads)
    assert store.publish(make_bundle(seed=3)) == 2
    wait_until(lambda: plan_version(s) == 2, timeout=5.0)


def test_rollback_to_a_lower_version_takes_effect(store: BundleStore, stub) -> None:
    _, s = stub
    store.publish(make_bundle(seed=2))
    wait_until(lambda: plan_version(s) == 2, timeout=5.0)
    store.rollback(MODEL, 1)
    delay = wait_until(lambda: plan_version(s) == 1, timeout=5.0)
    print(f"\nrollback delay: {delay * 1000:.1f} ms")


def test_the_timer_catches_a_lost_announcement(store: BundleStore, start_cache) -> None:
    store.publish(make_bundle(seed=1))
    server = start_cache(refresh_seconds=0.2)
    store.publish(make_bundle(seed=2))
    store.client.set(names.bundle_pointer_key(MODEL), 1)  # moved back without an announcement
    wait_until(lambda: server.probes.version(MODEL) == 1, timeout=3.0)


def test_swaps_under_load_fail_no_lookup(store: BundleStore, stub) -> None:
    """A client sends without pause while two bundles land: every reply is an answer, and the
    version each reply names never goes backwards."""
    server, _ = stub
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    stream = Stream(channel)
    x = np.random.default_rng(0).normal(size=(1, 16)).astype(np.float32)
    seen: list[int] = []
    failures: list[str] = []
    stop = threading.Event()

    def load() -> None:
        seq = 0
        while not stop.is_set():
            seq += 1
            reply = stream.ask(lookup_request(seq, "layer1.2", x, request_id=f"r{seq}"))
            if reply.error or len(reply.hit) != 1:
                failures.append(reply.error)
            seen.append(reply.bundle_version)

    client = threading.Thread(target=load)
    client.start()
    for version in (2, 3):
        time.sleep(0.1)
        store.publish(make_bundle(seed=version))
        wait_until(lambda v=version: server.probes.version(MODEL) == v, timeout=5.0)
    time.sleep(0.1)
    stop.set()
    client.join(timeout=10)
    stream.close()
    channel.close()
    assert not failures
    assert seen == sorted(seen) and seen[0] == 1 and seen[-1] == 3
    print(f"\n{len(seen)} lookups across two swaps, none failed")


def test_redis_outage_keeps_the_last_good_bundle(start_cache, tmp_path) -> None:
    """Redis dies: lookups and plans go on with v1. It comes back (same port): the service
    resubscribes and reads the pointer, so a bundle published meanwhile is picked up."""
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    redis_proc = start_redis(port, tmp_path / "r1")
    try:
        store = BundleStore(url)
        store.publish(make_bundle(seed=1))
        server = start_cache(redis_url=url, refresh_seconds=0.2, redis_backoff_max_seconds=0.5)
        channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
        s = cache_pb2_grpc.CacheServiceStub(channel)
        redis_proc.kill()
        wait_until(lambda: sample(server.metrics, "gati_cache_redis_errors_total") > 0, 5.0)
        stream = Stream(channel)
        reply = stream.ask(lookup_request(1, "layer1.2", np.ones((1, 16), np.float32)))
        assert reply.error == "" and reply.bundle_version == 1
        assert plan_version(s) == 1

        redis_proc = start_redis(port, tmp_path / "r2")  # empty: it kept nothing on disk
        store = BundleStore(url)
        store.publish(make_bundle(seed=2))  # v1 again in the new Redis, then v2
        store.publish(make_bundle(seed=3))
        delay = wait_until(lambda: plan_version(s) == 2, timeout=10.0)
        print(f"\nafter Redis came back: new bundle in use {delay * 1000:.0f} ms after publish")
        stream.close()
        channel.close()
        store.close()
    finally:
        redis_proc.stop()
