"""Client load for the reliability suite: N threads keep a live inference service busy.

Every outcome is counted (answered, failed with its status, hit, bundle version), so a test can
inject a fault while the clients run and then say exactly how many requests went through and
that none failed. The clients alternate between cached requests (probes looked up) and plain
ones (`gati.caches` false: the full model runs, so every record carries the base model's label),
which keeps both the cache service and the trainer's labelled records busy.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
import numpy as np

from bench.stack import request
from gati import names
from gati.api import grpc_service_pb2_grpc as pb_grpc

CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", 64 << 20),
    ("grpc.max_receive_message_length", 64 << 20),
]


@dataclass
class Outcomes:
    """What the clients saw; read it after `Load.stop` (or under `Load.lock` while running)."""

    sent: int = 0
    ok: int = 0
    hits: int = 0
    failed: list[str] = field(default_factory=list)  # "CODE: details", in order
    # (monotonic time, bundle version) of the last cached answers, for "is v2 in use yet"
    versions: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=2000))


class Load:
    """`clients` threads sending batch-1 requests back to back until stopped (a context manager).

    images: uint8 [n, 32, 32, 3], cycled. caches_every: every k-th request uses the caches
    (1: all of them; 2: every other one, the rest run the full model). pause_s: think time
    between a client's requests (0: closed loop, the CPU saturates).
    """

    def __init__(
        self,
        address: str,
        model: str,
        images: np.ndarray,
        clients: int = 4,
        *,
        timeout_s: float = 10.0,
        caches_every: int = 2,
        pause_s: float = 0.0,
    ) -> None:
        assert images.ndim == 4 and images.dtype == np.uint8, images.shape
        self.address, self.model, self.images = address, model, images
        self.timeout_s = timeout_s
        self.caches_every = caches_every
        self.pause_s = pause_s
        self.lock = threading.Lock()
        self.outcomes = Outcomes()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._client, args=(k,), name=f"load-{k}", daemon=True)
            for k in range(clients)
        ]

    # --- lifecycle ----------------------------------------------------------------------------
    def start(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> Outcomes:
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout_s + 5)
        return self.outcomes

    def __enter__(self) -> Load:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- reading while it runs -------------------------------------------------------------
    def counts(self) -> tuple[int, int, int]:
        """(answered, failed, hits) so far."""
        with self.lock:
            o = self.outcomes
            return o.ok, len(o.failed), o.hits

    def versions_since(self, t: float) -> set[int]:
        """Bundle versions of the cached answers that arrived after monotonic time `t`."""
        with self.lock:
            return {v for at, v in self.outcomes.versions if at >= t}

    def wait_answers(self, n: int, timeout: float = 30.0) -> None:
        """Block until `n` more requests were answered (the clients are making progress)."""
        target = self.counts()[0] + n
        wait_until(lambda: self.counts()[0] >= target, timeout, f"{n} more answers")

    # --- one client -------------------------------------------------------------------------
    def _client(self, k: int) -> None:
        with grpc.insecure_channel(self.address, options=CHANNEL_OPTIONS) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            i = k  # clients start at different images
            while not self._stop.is_set():
                image = self.images[i % len(self.images)][None]  # [1, 32, 32, 3]
                caches = i % self.caches_every == 0
                try:
                    reply = stub.ModelInfer(
                        request(self.model, image, caches=caches), timeout=self.timeout_s
                    )
                except grpc.RpcError as exc:
                    with self.lock:
                        self.outcomes.sent += 1
                        self.outcomes.failed.append(f"{exc.code().name}: {exc.details()}")
                else:
                    hit = reply.parameters[names.PARAM_HIT].bool_param
                    version = reply.parameters[names.PARAM_BUNDLE_VERSION].int64_param
                    with self.lock:
                        self.outcomes.sent += 1
                        self.outcomes.ok += 1
                        self.outcomes.hits += hit
                        if caches:  # a plain request uses no bundle: its version says 0
                            self.outcomes.versions.append((time.monotonic(), version))
                i += 1
                if self.pause_s:
                    self._stop.wait(self.pause_s)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until `predicate()` held (checked every 50 ms); TimeoutError naming `what`."""
    start = time.monotonic()
    while True:
        if predicate():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"{what}: not within {timeout:.0f}s")
        time.sleep(0.05)
