"""Lookup round trip vs a bare gRPC bidi ping-pong, between processes on this machine.

The target is a lookup's p50 round trip within 1.2x of a bare ping-pong.
Both servers run as separate processes on loopback with the same message sizes: an *echo*
server (the same gati.v1 Lookup method on the same grpc.aio server, answering without
evaluating anything) and `gati serve cache` with a bundle from a private Redis. One client
stream sends a lookup and waits for its reply, as the inference service's stream does.
With --tls (the default) a second cache service on the same Redis serves mutual TLS, as a
mesh would run it, so the table shows what TLS costs a lookup, measured side by side.

    gati bench rtt [--requests 2000] [--rounds 2] [--selector max-softmax]
                                 [--memory 0] [--no-tls] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import queue
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
import numpy as np

from gati.api import cache_pb2, cache_pb2_grpc
from gati.probes.fitting.synthetic import random_bundle
from gati.probes.serving.runtime import ProbeRuntime
from gati.store import BundleStore
from launch.certificates import generate
from launch.ports import LOCALHOST, free_port
from launch.processes import (
    ManagedProcess,
    start_redis,
    start_service,
    wait_for_port,
    wait_serving,
)
from launch.topology import Cache
from services.common.tls import ClientTls, channel

MODEL = "rtt"
# What a ResNet's cuts send: pool1 of 16 channels, pool2 of 32, pool4 of 64.
LAYERS = {"layer1.2": ("linear", 16), "layer2.1": ("mlp", 32), "layer3.0": ("conv", 64)}
DIMS = {"layer1.2": 16, "layer2.1": 128, "layer3.0": 1024}


class EchoServicer(cache_pb2_grpc.CacheServiceServicer):
    """The baseline: the same stream and message shapes, no evaluation."""

    async def Lookup(self, request_iterator, context):
        async for r in request_iterator:
            rows = r.activation.shape[0] if r.activation.shape else 1
            yield cache_pb2.LookupReply(
                seq=r.seq,
                request_id=r.request_id,
                layer=r.layer,
                hit=[False] * rows,
                label=[0] * rows,
                confidence=[0.0] * rows,
                bundle_version=r.bundle_version,
            )


def serve_echo(port: int) -> None:
    """Run the echo server until killed (grpc.aio, as the cache service uses)."""

    async def serve() -> None:
        server = grpc.aio.server()
        cache_pb2_grpc.add_CacheServiceServicer_to_server(EchoServicer(), server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    asyncio.run(serve())


def start_echo(port: int, log_path: Path) -> ManagedProcess:
    """The echo server in its own process (`python -m bench.rtt --echo PORT`); not waited for."""
    argv = [sys.executable, "-m", "bench.rtt", "--echo", str(port)]
    return ManagedProcess("echo", argv, log_path).start()


@dataclass
class RoundTrips:
    server: str
    layer: str
    floats: int
    requests: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    inside_ms: float | None = None  # mean time inside the cache service (its own histogram)
    probe_ms: float | None = None  # mean ProbeRuntime.lookup alone, in this process


def measure(
    address: str, layer: str, requests: int, warmup: int = 200, tls: ClientTls | None = None
) -> np.ndarray:
    """Seconds per round trip of `requests` one-row lookups on one stream (TLS if `tls`)."""
    outbox: queue.SimpleQueue = queue.SimpleQueue()

    def send() -> Iterator[cache_pb2.LookupRequest]:
        while (item := outbox.get()) is not None:
            yield item

    x = np.random.default_rng(0).normal(size=(1, DIMS[layer])).astype(np.float32)
    with channel(address, tls) as ch:
        grpc.channel_ready_future(ch).result(timeout=30)
        replies = cache_pb2_grpc.CacheServiceStub(ch).Lookup(send())
        times = np.empty(requests)
        for i in range(warmup + requests):
            request = cache_pb2.LookupRequest(
                seq=i,
                request_id=f"r{i}",
                model=MODEL,
                layer=layer,
                activation=cache_pb2.Tensor(
                    dtype="float32", shape=[1, x.shape[1]], data=x.tobytes()
                ),
                bundle_version=1,
                rows=[0],
            )
            start = time.perf_counter()
            outbox.put(request)
            reply = next(replies)
            if i >= warmup:
                times[i - warmup] = time.perf_counter() - start
            if reply.error:
                raise RuntimeError(f"lookup failed: {reply.error}")
        outbox.put(None)
    return times


def summarize(server: str, layer: str, times: np.ndarray) -> RoundTrips:
    ms = times * 1000.0
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return RoundTrips(
        server, layer, DIMS[layer], len(ms), float(p50), float(p90), float(p99), float(ms.mean())
    )


def scrape_latency(metrics_port: int) -> tuple[float, float]:
    """(sum seconds, count) of the cache service's lookup latency histogram."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    values = {"sum": 0.0, "count": 0.0}
    for line in text.splitlines():
        for part in values:
            if line.startswith(f"gati_cache_lookup_latency_seconds_{part}{{"):
                values[part] += float(line.rsplit(" ", 1)[1])
    return values["sum"], values["count"]


def probe_cost(runtime: ProbeRuntime, layer: str, n: int = 2000) -> float:
    """Mean seconds of one single-row ProbeRuntime.lookup (what no transport can save)."""
    x = np.random.default_rng(0).normal(size=(1, DIMS[layer])).astype(np.float32)
    states = [runtime.new_state()]
    for _ in range(100):
        runtime.lookup(layer, x, states)
    start = time.perf_counter()
    for _ in range(n):
        runtime.lookup(layer, x, states)
    return (time.perf_counter() - start) / n


def run_benchmark(
    requests: int,
    rounds: int,
    work: Path,
    selector: str = "logistic",
    memory_size: int = 512,
    tls: bool = True,
) -> list[RoundTrips]:
    """Start Redis, the echo server and `gati serve cache` (and one behind mutual TLS);
    alternate measurements."""
    redis_port, echo_port, cache_port, metrics_port = (free_port() for _ in range(4))
    procs = [start_redis(redis_port, work)]
    try:
        url = f"redis://127.0.0.1:{redis_port}/0"
        bundle = random_bundle(LAYERS, model_id=MODEL, selector=selector, memory_size=memory_size)
        store = BundleStore(url)
        store.publish(bundle)
        store.close()
        procs.append(start_echo(echo_port, work / "echo.log"))
        cache = Cache(
            port=cache_port, metrics_port=metrics_port, redis_url=url, host=LOCALHOST,
            log_level="WARNING",
        )  # fmt: skip
        procs.append(start_service(cache, work / "cache.log"))
        targets: list[tuple[str, Cache]] = [("cache", cache)]
        if tls:
            made = generate(work / "tls", names=("stack",))
            pair = made.client("stack")
            secure = Cache(
                port=free_port(), redis_url=url, host=LOCALHOST, log_level="WARNING",
                name="cache-tls", tls=pair,
            )  # fmt: skip
            procs.append(start_service(secure, work / "cache-tls.log"))
            targets.append(("cache+mtls", secure))
        wait_for_port(LOCALHOST, echo_port, 30, procs[1].proc)
        for (_, service), proc in zip(targets, procs[2:], strict=True):
            wait_serving(service, proc, 60)
        times: dict[tuple[str, str], list[np.ndarray]] = {}
        inside: dict[str, list[float]] = {layer: [0.0, 0.0] for layer in LAYERS}
        for _ in range(rounds):  # interleaved, so drifting load on the machine hits them all
            for layer in LAYERS:
                times.setdefault(("echo", layer), []).append(
                    measure(f"127.0.0.1:{echo_port}", layer, requests)
                )
                for server, service in targets:
                    before = scrape_latency(metrics_port)
                    t = measure(service.address, layer, requests, tls=service.client_tls)
                    times.setdefault((server, layer), []).append(t)
                    if server == "cache":
                        after = scrape_latency(metrics_port)
                        inside[layer][0] += after[0] - before[0]
                        inside[layer][1] += after[1] - before[1]
        runtime = ProbeRuntime(bundle)
        results = []
        for (server, layer), ts in times.items():
            r = summarize(server, layer, np.concatenate(ts))
            if server == "cache":
                r.inside_ms = 1000.0 * inside[layer][0] / max(inside[layer][1], 1.0)
                r.probe_ms = 1000.0 * probe_cost(runtime, layer)
            results.append(r)
        return results
    finally:
        for proc in reversed(procs):
            proc.stop()


def table(results: list[RoundTrips]) -> str:
    lines = [
        f"{'server':10} {'layer':9} {'floats':>6} {'p50 ms':>7} {'p90 ms':>7} {'p99 ms':>7} "
        f"{'inside':>7} {'probe':>7}"
    ]
    by = {(r.server, r.layer): r for r in results}
    for r in results:
        extra = (
            f" {r.inside_ms:7.3f} {r.probe_ms:7.3f}"
            if r.inside_ms is not None and r.probe_ms is not None
            else ""
        )
        lines.append(
            f"{r.server:10} {r.layer:9} {r.floats:6d} "
            f"{r.p50_ms:7.3f} {r.p90_ms:7.3f} {r.p99_ms:7.3f}{extra}"
        )
    lines.append("inside: mean ms within the cache service; probe: ProbeRuntime.lookup alone")
    for layer in LAYERS:
        if ("echo", layer) in by and ("cache", layer) in by:
            ratio = by[("cache", layer)].p50_ms / by[("echo", layer)].p50_ms
            lines.append(f"p50 lookup / bare ping-pong at {layer}: {ratio:.2f}x (target <= 1.2x)")
        if ("cache+mtls", layer) in by and ("cache", layer) in by:
            ratio = by[("cache+mtls", layer)].p50_ms / by[("cache", layer)].p50_ms
            lines.append(f"p50 lookup over mutual TLS / plaintext at {layer}: {ratio:.2f}x")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--requests", type=int, default=2000, help="round trips per measurement")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved repetitions")
    parser.add_argument(
        "--selector",
        choices=("max-softmax", "logistic"),
        default="logistic",
        help="selector of the probe looked up",
    )
    parser.add_argument("--memory", type=int, default=512, help="novelty memory entries (0: none)")
    parser.add_argument(
        "--tls",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure a cache service behind mutual TLS (--no-tls: plaintext only)",
    )
    parser.add_argument(
        "--json", default=None, metavar="PATH", help="write the figures here as JSON"
    )
    parser.add_argument(
        "--echo",
        type=int,
        default=None,
        metavar="PORT",
        help="internal: only serve the bare ping-pong on PORT (how the benchmark starts it)",
    )


def run(args: argparse.Namespace) -> int:
    if args.echo is not None:  # the bare ping-pong server, started as a child process
        serve_echo(args.echo)
        return 0
    with tempfile.TemporaryDirectory(prefix="gati-rtt-") as tmp:
        results = run_benchmark(
            args.requests, args.rounds, Path(tmp), args.selector, args.memory, args.tls
        )
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in results], indent=1) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
