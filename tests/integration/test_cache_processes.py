"""The request path across separate processes: Redis, cache service, inference service.

Publish v1 and see hits; publish v2 under continuous load and measure when it is in use,
with zero failed requests; a corrupt bundle is refused and v2 stays; killing the cache
service under load fails no request; restarting it brings hits back.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import redis

from bench.stack import local_stack, request, wait_for_bundle
from gati import names
from gati.data import load_npz
from gati.models import load_model
from gati.probes.fitting.synthetic import random_bundle
from gati.store import BundleStore
from launch.processes import wait_for_health

MODEL = "cifar"


class Load:
    """Two clients sending without pause; every outcome is counted."""

    def __init__(self, stack, images: np.ndarray) -> None:
        self.stack, self.images = stack, images
        self.ok, self.failed, self.hits = 0, [], 0
        self.versions: list[int] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client) for _ in range(2)]

    def _client(self) -> None:
        with self.stack.channel() as channel:
            from gati.api import grpc_service_pb2_grpc as pb_grpc

            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            i = 0
            while not self._stop.is_set():
                try:
                    reply = stub.ModelInfer(
                        request(MODEL, self.images[i % len(self.images)][None]), timeout=10
                    )
                    self.ok += 1
                    self.hits += reply.parameters[names.PARAM_HIT].bool_param
                    self.versions.append(reply.parameters[names.PARAM_BUNDLE_VERSION].int64_param)
                except Exception as exc:
                    self.failed.append(repr(exc))
                i += 1

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()


def test_publish_swap_refuse_kill_restart(
    tmp_path: Path, assets: Path, resnet20_weights: Path
) -> None:
    images = load_npz(assets / "cifar10" / "test.npz")[0][:64]
    fingerprint = load_model("resnet20", resnet20_weights).fingerprint()
    layers = {"layer1.1": ("linear", 16), "layer2.0": ("linear", 32)}
    with local_stack(
        tmp_path,
        MODEL,
        "resnet20",
        str(resnet20_weights),
        # random bundles answer at random: without shadow completions the live guard has no
        # evidence to switch them off, so hits stay visible for the reload checks
        inference_args=(
            *("--exact-cache-entries", "0", "--plan-refresh-seconds", "0.2"),
            *("--shadow-fraction", "0"),
        ),
        cache_args=("--refresh-seconds", "0.5"),
    ) as stack:
        store = BundleStore(stack.redis_url)
        v1 = store.publish(
            random_bundle(layers, model_id=MODEL, fingerprint=fingerprint, threshold=0.0, seed=1),
            model=MODEL,
        )
        wait_for_bundle(stack, MODEL, images[0], v1)
        with Load(stack, images) as load:
            time.sleep(0.5)
            assert load.hits > 0
            v2 = store.publish(
                random_bundle(
                    layers, model_id=MODEL, fingerprint=fingerprint, threshold=0.0, seed=2
                ),
                model=MODEL,
            )
            published = time.monotonic()
            while v2 not in load.versions[-20:] and time.monotonic() - published < 10:
                time.sleep(0.01)
            delay = time.monotonic() - published
            # a corrupt bundle behind the pointer: refused, v2 stays in use
            r = redis.Redis.from_url(stack.redis_url)
            r.set(names.bundle_key(MODEL, v2 + 1), b"not a bundle" * 100)
            r.set(names.bundle_pointer_key(MODEL), v2 + 1)
            r.publish(names.BUNDLE_CHANNEL, json.dumps({"model": MODEL, "version": v2 + 1}))
            time.sleep(1.5)
            after_corrupt = list(load.versions[-50:])
            # kill the cache service under load
            stack.processes["cache"].kill()
            killed_at = load.ok
            time.sleep(1.5)
            served_while_down = load.ok - killed_at
            hits_before_restart = load.hits
            stack.processes["cache"].start()
            wait_for_health(f"127.0.0.1:{stack.cache_port}", names.HEALTH_CACHE, 60)
            restarted = time.monotonic()
            while load.hits == hits_before_restart and time.monotonic() - restarted < 20:
                time.sleep(0.05)
            recovered = time.monotonic() - restarted
        store.close()
    print(
        f"\nv{v2} in use {delay * 1000:.0f} ms after publish; {served_while_down} requests "
        f"served while the cache service was down; hits back {recovered:.1f}s after restart; "
        f"{load.ok} requests, {len(load.failed)} failed"
    )
    assert load.failed == []
    assert v2 in load.versions
    assert set(after_corrupt) <= {v2, 0} and v2 in after_corrupt
    assert served_while_down > 0
    assert load.hits > hits_before_restart
