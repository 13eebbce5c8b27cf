"""Closed-loop load: C client threads send a stream of batch-1 requests, one at a time each."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import grpc
import numpy as np
from tqdm import tqdm

from gati import names
from gati.api import grpc_service_pb2_grpc as pb_grpc
from gati.bench.stack import request


@dataclass
class Run:
    latency_s: np.ndarray  # [n] per request, in stream order
    labels: np.ndarray  # [n] served label
    hit: np.ndarray  # [n] bool
    exit_layer: list[str]
    bundle_version: np.ndarray  # [n]
    sent_at: np.ndarray  # [n] seconds since the run started
    wall_s: float
    errors: int

    def throughput(self) -> float:
        return len(self.latency_s) / self.wall_s if self.wall_s > 0 else 0.0


def closed_loop(
    channel: grpc.Channel,
    model: str,
    images: np.ndarray,
    concurrency: int,
    caches: bool,
    desc: str = "",
    progress: bool = True,
) -> Run:
    """Send every image once, `concurrency` clients in parallel; record each answer."""
    n = len(images)
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    latency = np.zeros(n)
    labels = np.full(n, -1, dtype=np.int64)
    hit = np.zeros(n, dtype=bool)
    version = np.zeros(n, dtype=np.int64)
    sent = np.zeros(n)
    exits = [""] * n
    errors = [0]
    next_index = iter(range(n))
    lock = threading.Lock()
    bar = tqdm(total=n, desc=desc, unit="req", disable=not progress, leave=False)
    t0 = time.perf_counter()

    def client() -> None:
        while True:
            with lock:
                i = next(next_index, None)
            if i is None:
                return
            req = request(model, images[i][None], caches=caches)
            start = time.perf_counter()
            try:
                reply = stub.ModelInfer(req, timeout=30)
            except grpc.RpcError:
                with lock:
                    errors[0] += 1
                continue
            latency[i] = time.perf_counter() - start
            sent[i] = start - t0
            labels[i] = np.frombuffer(reply.raw_output_contents[1], dtype=np.int64)[0]
            hit[i] = reply.parameters[names.PARAM_HIT].bool_param
            exits[i] = reply.parameters[names.PARAM_EXIT_LAYER].string_param
            version[i] = reply.parameters[names.PARAM_BUNDLE_VERSION].int64_param
            bar.update()

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    bar.close()
    return Run(latency, labels, hit, exits, version, sent, wall, errors[0])
