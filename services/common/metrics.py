"""Prometheus exposition over HTTP for a service's own registry.

Each service instance owns a `CollectorRegistry` (not the global one), so several servers can
live in one test process without clashing.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

LATENCY_BUCKETS = (
    0.0001,
    0.0002,
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.02,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)


def serve_metrics(registry: CollectorRegistry, host: str, port: int) -> int | None:
    """Start the /metrics endpoint; port 0 picks a free one, -1 disables. Returns the port."""
    if port < 0:
        return None
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server.server_port


class ThreadMetrics:
    """Per essential background thread: is it running, and how many unexpected errors did its
    loop catch and go on from. One family for every service, so one alert covers them all."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.alive = Gauge(
            "gati_thread_alive",
            "essential background thread running (1) or dead (0); health is NOT_SERVING at 0",
            ["thread"],
            registry=registry,
        )
        self.errors = Counter(
            "gati_background_errors",
            "unexpected errors a background loop caught, logged and went on from",
            ["thread"],
            registry=registry,
        )
