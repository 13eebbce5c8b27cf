"""Closed-loop load: C client threads send a stream of batch-1 requests, one at a time each."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import grpc
import numpy as np
from tqdm import tqdm

from bench.stack import request
from gati import names
from gati.api import grpc_service_pb2_grpc as pb_grpc


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
    exact_hit: np.ndarray | None = None  # [n] bool: answered by the exact-match cache

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
    exact = np.zeros(n, dtype=bool)
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
            exact[i] = reply.parameters[names.PARAM_EXACT_HIT].bool_param
            bar.update()
            if progress and i % 100 == 99:  # live figures over the last 100 of the stream
                recent = slice(i - 99, i + 1)
                bar.set_postfix(
                    ms=f"{latency[recent].mean() * 1e3:.2f}",
                    hit=f"{(hit[recent] | exact[recent]).mean():.0%}",
                    v=int(version[i]),
                    refresh=False,
                )

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    bar.close()
    return Run(latency, labels, hit, exits, version, sent, wall, errors[0], exact)


def interleaved(
    targets: dict[str, tuple[grpc.Channel, bool]],
    model: str,
    images: np.ndarray,
    desc: str = "",
    progress: bool = True,
    rate: float = 0.0,
) -> dict[str, Run]:
    """One client, batch 1: request i goes to every target before request i + 1 goes to any.

    `targets` maps a name to (channel, gati.caches). Whoever goes first rotates from one
    request to the next. Load from elsewhere on the machine (other jobs, a trainer fitting
    in the background) then falls on every target alike, so their ratios hold even when
    absolute times drift. `rate` > 0 paces the rounds: round i starts no earlier than
    i / rate seconds.
    """
    n, order = len(images), list(targets)
    stubs = {k: pb_grpc.GRPCInferenceServiceStub(ch) for k, (ch, _) in targets.items()}
    out = {
        k: Run(
            np.zeros(n),
            np.full(n, -1, dtype=np.int64),
            np.zeros(n, dtype=bool),
            [""] * n,
            np.zeros(n, dtype=np.int64),
            np.zeros(n),
            0.0,
            0,
            np.zeros(n, dtype=bool),
        )
        for k in order
    }
    bar = tqdm(total=n, desc=desc, unit="req", disable=not progress, leave=False)
    t0 = time.perf_counter()
    for i in range(n):
        if rate > 0 and (wait := t0 + i / rate - time.perf_counter()) > 0:
            time.sleep(wait)
        for j in range(len(order)):
            k = order[(i + j) % len(order)]
            r = out[k]
            req = request(model, images[i][None], caches=targets[k][1])
            start = time.perf_counter()
            r.sent_at[i] = start - t0
            try:
                reply = stubs[k].ModelInfer(req, timeout=30)
            except grpc.RpcError:
                r.latency_s[i] = time.perf_counter() - start
                r.errors += 1
                continue
            r.latency_s[i] = time.perf_counter() - start
            r.labels[i] = np.frombuffer(reply.raw_output_contents[1], dtype=np.int64)[0]
            r.hit[i] = reply.parameters[names.PARAM_HIT].bool_param
            r.exit_layer[i] = reply.parameters[names.PARAM_EXIT_LAYER].string_param
            r.bundle_version[i] = reply.parameters[names.PARAM_BUNDLE_VERSION].int64_param
            r.exact_hit[i] = reply.parameters[names.PARAM_EXACT_HIT].bool_param  # type: ignore[index]
        bar.update()
        if progress and i % 100 == 99:  # mean ms over the last 100 requests, per target
            recent = slice(i - 99, i + 1)
            bar.set_postfix(
                {k: f"{out[k].latency_s[recent].mean() * 1e3:.1f}ms" for k in order},
                refresh=False,
            )
    wall = time.perf_counter() - t0
    bar.close()
    for r in out.values():
        r.wall_s = wall
    return out
