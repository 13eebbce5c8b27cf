"""What the three services do alike around their own wiring: go live, serve, drain on SIGTERM.

Each service's `server.build` wires its parts and binds its gRPC port (services.common.
grpc_server); from there all three do the same: health guarded by the essential threads,
/metrics served, health SERVING, one start-up log line naming both ports, on the service's
own logger (`go_live`). Each `main.run` then prints where it listens, blocks until SIGTERM or
SIGINT and stops (`run_until_signal`). `Service` is the base of their server objects, so
stopping reads the same in tests and in production: drain the RPCs, then close the clients.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Protocol

from prometheus_client import CollectorRegistry

from services.common.grpc_server import AioGrpcServer, GrpcServer
from services.common.liveness import Liveness
from services.common.metrics import serve_metrics

log = logging.getLogger(__name__)


class ServiceMetrics(Protocol):
    """What `go_live` needs of a service's metrics: its registry and its essential threads."""

    registry: CollectorRegistry
    threads: Liveness


class Service:
    """Base of a service's server object (a dataclass with fields `handle`, `metrics_port`)."""

    handle: GrpcServer | AioGrpcServer
    metrics_port: int | None

    @property
    def port(self) -> int:
        return self.handle.port

    def drain(self, grace: float) -> None:
        """Refuse new RPCs, let in-flight ones finish within `grace` seconds."""
        self.handle.stop(grace)

    def close_clients(self, grace: float) -> None:
        """After the drain: stop the background work (within `grace`), close connections."""

    def stop(self, grace: float = 0.0) -> None:
        self.drain(grace)
        self.close_clients(grace)


def go_live(
    handle: GrpcServer | AioGrpcServer,
    metrics: ServiceMetrics,
    host: str,
    metrics_port: int,
    what: str,
    details: str = "",
    *,
    logger: logging.Logger,
) -> int | None:
    """Guard health with the essential threads, serve /metrics, say SERVING, log the ports
    (on the service's own `logger`, so the line names the service); returns the metrics port
    (None: off)."""
    metrics.threads.guard(handle)  # a dead essential thread: NOT_SERVING
    bound = serve_metrics(metrics.registry, host, metrics_port)
    handle.set_serving(True)
    logger.info("%s on port %d (metrics %s)%s", what, handle.port, bound, details)
    return bound


def run_until_signal(service: Service, banner: str, grace: float) -> int:
    """Print `banner`, block until SIGTERM or SIGINT (main thread only), stop within `grace`;
    the exit status."""
    print(banner, flush=True)
    wait_for_signal(grace)
    service.stop(grace)
    return 0


def wait_for_signal(grace: float) -> None:
    """Block until SIGTERM or SIGINT (main thread only); logs the drain that follows."""
    done = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal %d: draining for up to %.1fs", signum, grace)
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    done.wait()
