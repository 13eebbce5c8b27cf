"""The stack under test: every gati process on one machine, and the handles to hurt it.

One stack serves the whole session (starting three torch processes costs about 30 s on two
cores): private Redis, Tansu broker, cache service, trainer and inference service, ResNet-20,
caches and activation records on. Each test leaves it healthy, with a good bundle current.

Settings chosen for the suite, and why:
- exact-match cache off: every served row then becomes exactly one activation record, so
  records offered = rows served (`gati_inference_rows`), the basis of the drop accounting;
- a small record queue (256 rows, also the cap on unacknowledged records): a broker outage of
  a few seconds must overflow it, so drops are seen without waiting for Kafka's 10 s delivery
  timeout;
- two recorded cuts, so records are small and the in-memory broker stays small;
- the live guard's agreement target near 0: the synthetic probes answer at random (threshold
  0: every lookup hits), and the guard would otherwise switch them off within a second, ending
  the lookups the cache-service faults need; shadow completions still run;
- the trainer never retrains (thresholds out of reach): rounds would take the CPU from serving
  and publish bundles over the ones the tests publish; it still consumes and commits.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

import grpc
import numpy as np

from bench.stack import Stack, request, wait_for_bundle
from gati.api import cache_pb2, cache_pb2_grpc
from gati.api import grpc_service_pb2 as pb
from gati.api import grpc_service_pb2_grpc as pb_grpc
from gati.probes.fitting.synthetic import random_bundle
from gati.probes.serving.reductions import grid
from gati.store import BundleStore
from launch.processes import ManagedProcess, wait_for_port, wait_serving
from tests.reliability.figures import Figures
from tests.reliability.load import CHANNEL_OPTIONS, Load
from tests.reliability.observe import Samples, rss, scrape, serving

MODEL = "cifar"
ARCH = "resnet20"
LAYERS = {"layer1.1": ("linear", 16), "layer2.0": ("linear", 32)}  # cut -> (variant, channels)
RECORD_QUEUE = 256
INFERENCE_ARGS = (
    "--exact-cache-entries", "0",
    "--plan-refresh-seconds", "0.2",
    "--record-queue", str(RECORD_QUEUE),
    "--record-layers", ",".join(LAYERS),
    "--agreement-target", "0.01",
)  # fmt: skip
CACHE_ARGS = ("--refresh-seconds", "0.5", "--redis-backoff-max-seconds", "1")
TRAINER_ARGS = (
    "--window-records", "1000",
    "--min-records", "1000",
    "--retrain-every", "1000000000",
    "--retrain-seconds", "1e9",
    "--topic-check-seconds", "2",
)  # fmt: skip
SERVICES = ("inference", "cache", "trainer")
RESTART_TIMEOUT = 120  # a torch process starting on two saturated cores


@dataclass
class Rig:
    stack: Stack
    images: np.ndarray  # uint8 [n, 32, 32, 3]
    fingerprint: str
    figures: Figures

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.stack.inference_port}"

    def proc(self, name: str) -> ManagedProcess:
        return self.stack.processes[name]

    def metrics(self, name: str) -> Samples:
        return scrape(self.stack.services[name].metrics_port)

    def healthy(self, name: str) -> bool:
        service = self.stack.services[name]
        return serving(service.address, service.health)

    # --- bundles -------------------------------------------------------------------------------
    def publish(self, seed: int, layers: dict[str, tuple[str, int]] = LAYERS) -> int:
        """Publish a good synthetic bundle (every lookup hits); returns its version."""
        bundle = random_bundle(
            layers, model_id=MODEL, fingerprint=self.fingerprint, threshold=0.0, seed=seed
        )
        store = BundleStore(self.stack.redis_url)  # a fresh client: Redis may have restarted
        try:
            return store.publish(bundle, model=MODEL)
        finally:
            store.close()

    def wait_version(self, version: int, timeout: float = 30.0) -> float:
        """Seconds until answers carry bundle `version` (sends its own requests)."""
        return wait_for_bundle(self.stack, MODEL, self.images[0], version, timeout)

    def ask(self, image: int = 0, caches: bool = True) -> pb.ModelInferResponse:
        """One request of our own (raises grpc.RpcError on failure)."""
        with grpc.insecure_channel(self.address, options=CHANNEL_OPTIONS) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            return stub.ModelInfer(request(MODEL, self.images[image][None], caches), timeout=10)

    def plan(self) -> tuple[int, list[str]]:
        """(bundle version, active layers) the cache service holds for the model now."""
        with grpc.insecure_channel(f"127.0.0.1:{self.stack.cache_port}") as channel:
            reply = cache_pb2_grpc.CacheServiceStub(channel).GetPlan(
                cache_pb2.PlanRequest(model=MODEL), timeout=5
            )
        return reply.bundle_version, [lp.layer for lp in reply.layers]

    # --- load ------------------------------------------------------------------------------------
    @contextmanager
    def load(self, clients: int = 4, **kw: float) -> Iterator[Load]:
        """Clients running for the body of the `with`; their outcomes go into the figures."""
        load = Load(self.address, MODEL, self.images, clients, **kw).start()
        try:
            yield load
        finally:
            self.figures.add_load(load.stop())

    # --- faults ----------------------------------------------------------------------------------
    def bring_back(self, name: str) -> float:
        """Start a stopped or killed process again (same argv, same port); seconds to healthy."""
        proc = self.proc(name)
        assert not proc.alive(), f"{name} is still running"
        start = time.monotonic()
        proc.start()
        if name in self.stack.services:
            try:
                wait_serving(self.stack.services[name], proc, RESTART_TIMEOUT)
            except Exception as exc:
                raise RuntimeError(f"{name} did not come back:\n{proc.log_tail()}") from exc
        else:  # redis, kafka
            wait_for_port("127.0.0.1", self._port(name), 30, proc.proc)
        return time.monotonic() - start

    def _port(self, name: str) -> int:
        """Where Redis or the broker listens: not services, so no description; the stack's
        URL of each says."""
        url = self.stack.redis_url if name == "redis" else f"tcp://{self.stack.kafka_bootstrap}"
        port = urlsplit(url).port
        assert port is not None, f"{name}: no port in {url}"
        return port

    # --- observations ----------------------------------------------------------------------------
    def records(self) -> dict[str, float]:
        """Records offered (rows served), sent and dropped per reason, from the inference side."""
        m = self.metrics("inference")
        out = {
            "offered": m.get("gati_inference_rows_total"),
            "sent": m.get("gati_records_sent_total"),
        }
        for reason, value in m.by("gati_records_dropped_total", "reason").items():
            out[f"dropped:{reason}"] = value
        return out

    def rss(self) -> dict[str, int]:
        return {name: rss(proc) for name, proc in self.stack.processes.items()}


class LookupStream:
    """One Lookup stream to the cache service, driven synchronously (`ask`: send one, wait for
    its reply), under a deadline so that no stream outlives a test; `end` closes it."""

    def __init__(self, channel: grpc.Channel, timeout_s: float = 120.0) -> None:
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        self._call = cache_pb2_grpc.CacheServiceStub(channel).Lookup(
            self._requests(), timeout=timeout_s
        )

    def _requests(self) -> Iterator[cache_pb2.LookupRequest]:
        while (item := self._outbox.get()) is not None:
            yield item

    def ask(self, request: cache_pb2.LookupRequest) -> cache_pb2.LookupReply:
        self._outbox.put(request)
        return next(self._call)

    def end(self) -> None:
        self._outbox.put(None)  # lets the request thread finish, refused stream or not
        try:
            for _ in self._call:  # drain until the server ends the stream
                pass
        except grpc.RpcError:
            pass  # a refused or failed stream ends with its error again


def lookup_request(
    layer: str, reduction: str, seq: int = 0, request_id: str = "reliability"
) -> cache_pb2.LookupRequest:
    """A one-row lookup of zeros at one of the suite's cuts (any answer will do)."""
    dims = LAYERS[layer][1] * grid(reduction) ** 2
    x = np.zeros((1, dims), np.float32)
    return cache_pb2.LookupRequest(
        seq=seq,
        request_id=request_id,
        model=MODEL,
        layer=layer,
        activation=cache_pb2.Tensor(dtype="float32", shape=[1, dims], data=x.tobytes()),
        rows=[0],
    )


def unaccounted(records: dict[str, float]) -> float:
    """Records neither sent nor counted as dropped (still queued or in flight, or lost)."""
    dropped = sum(v for k, v in records.items() if k.startswith("dropped:"))
    return records["offered"] - records["sent"] - dropped
