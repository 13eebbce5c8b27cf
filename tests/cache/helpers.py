"""Shared pieces of the cache tests: bundles, a lookup stream client, metric reads."""

from __future__ import annotations

import copy
import queue
import time
from collections.abc import Callable, Iterator

import grpc
import numpy as np

from gati import names
from gati.api import cache_pb2, cache_pb2_grpc
from gati.probes.fitting.entries import tensor_spec
from gati.probes.fitting.synthetic import random_bundle
from gati.probes.serving.bundle import Bundle
from gati.probes.serving.live import LiveRule
from gati.store import Announcement, BundleStore
from services.cache.metrics import CacheMetrics

MODEL = "resnet20"
FINGERPRINT = "f" * 32
# cut -> (variant, channels): what the cache service reads is [rows, channels * grid^2].
LAYERS = {"layer1.2": ("linear", 16), "layer2.1": ("mlp", 32), "layer3.0": ("conv", 64)}
DIMS = {"layer1.2": 16, "layer2.1": 128, "layer3.0": 1024}


def make_bundle(seed: int = 0, layers: dict | None = None, threshold: float = 0.5) -> Bundle:
    """A real bundle (random probes, learned selector with previous-cut and novelty features)."""
    return random_bundle(
        LAYERS if layers is None else layers,
        model_id=MODEL,
        fingerprint=FINGERPRINT,
        selector="logistic",
        memory_size=64,
        threshold=threshold,
        seed=seed,
    )


def with_live(bundle: Bundle, layer: str, k: int, radius: float, threshold: float = 1.0) -> Bundle:
    """`bundle` whose `layer` carries a live rule (pool1, unit standardisation) and a probe
    threshold no score reaches, so every hit there comes from the live memory."""
    manifest = copy.deepcopy(bundle.manifest)
    tensors = dict(bundle.tensors)
    (entry,) = [e for e in manifest["layers"] if e["layer"] == layer]
    dim = int(entry["channels"])
    rule = LiveRule("pool1", dim, k, radius, np.zeros(dim, np.float32), np.ones(dim, np.float32))
    entry["live"] = rule.manifest()
    entry["threshold"] = threshold
    for role, t in rule.tensors().items():
        tensors[entry["prefix"] + role] = t
        entry["tensors"][entry["prefix"] + role] = tensor_spec(t)
    return Bundle._sealed(manifest, tensors)


def lookup_request(
    seq: int, layer: str, x: np.ndarray, request_id: str = "r", model: str = MODEL, version=0
) -> cache_pb2.LookupRequest:
    x = np.ascontiguousarray(x, dtype=np.float32)
    return cache_pb2.LookupRequest(
        seq=seq,
        request_id=request_id,
        model=model,
        layer=layer,
        activation=cache_pb2.Tensor(dtype="float32", shape=list(x.shape), data=x.tobytes()),
        bundle_version=version,
        rows=list(range(x.shape[0])),
    )


class Stream:
    """One Lookup stream driven synchronously: `ask` sends one request and waits its reply."""

    def __init__(self, channel: grpc.Channel) -> None:
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        self._call = cache_pb2_grpc.CacheServiceStub(channel).Lookup(self._requests())

    def _requests(self) -> Iterator[cache_pb2.LookupRequest]:
        while (item := self._outbox.get()) is not None:
            yield item

    def send(self, request: cache_pb2.LookupRequest) -> None:
        self._outbox.put(request)

    def receive(self) -> cache_pb2.LookupReply:
        return next(self._call)

    def ask(self, request: cache_pb2.LookupRequest) -> cache_pb2.LookupReply:
        self.send(request)
        return self.receive()

    def close(self) -> None:
        self._outbox.put(None)
        for _ in self._call:  # drain until the server ends the stream
            pass


def sample(metrics: CacheMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def wait_until(predicate: Callable[[], bool], timeout: float, step: float = 0.005) -> float:
    """Seconds until `predicate()` held; raises AssertionError after `timeout`."""
    start = time.perf_counter()
    while not predicate():
        if time.perf_counter() - start > timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(step)
    return time.perf_counter() - start


def write_raw(store: BundleStore, version: int, data: bytes) -> None:
    """What a broken or hostile publisher could do: any bytes stored as `version`, the pointer
    moved and announced, with none of `BundleStore.publish`'s checks."""
    r = store.client
    r.set(names.bundle_key(MODEL, version), data)
    r.zadd(names.bundle_versions_key(MODEL), {str(version): version})
    r.set(names.bundle_pointer_key(MODEL), version)
    r.publish(names.BUNDLE_CHANNEL, Announcement(MODEL, version).to_json())
