"""Build a gRPC server with health and reflection, run it, drain it on SIGTERM.

Building (bind, possibly port 0, return the port) is kept apart from running, so tests start
real servers in-process cheaply. Health says NOT_SERVING until the service calls
`set_serving`, and again while draining, so load balancers stop sending before we stop.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterable
from concurrent import futures
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

log = logging.getLogger(__name__)


@dataclass
class GrpcServer:
    server: grpc.Server
    port: int
    health: health.HealthServicer
    service_names: tuple[str, ...]
    stopped: threading.Event = field(default_factory=threading.Event)

    def set_serving(self, serving: bool = True) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *self.service_names):
            self.health.set(name, status)

    def stop(self, grace: float) -> None:
        """Refuse new RPCs, let in-flight ones finish within `grace` seconds."""
        self.set_serving(False)
        self.server.stop(grace).wait()
        self.stopped.set()

    def wait_for_signal(self, grace: float) -> None:
        """Block until SIGTERM or SIGINT, then drain (main thread only)."""
        done = threading.Event()

        def on_signal(signum: int, _frame: object) -> None:
            log.info("signal %d: draining for up to %.1fs", signum, grace)
            done.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        done.wait()
        self.stop(grace)


def build_server(
    host: str,
    port: int,
    workers: int,
    max_message_bytes: int,
    service_names: Iterable[str],
    reflection_names: Iterable[str],
) -> tuple[grpc.Server, GrpcServer]:
    """A started-later server with health + reflection registered; add servicers, then start."""
    options = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=options)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = tuple(service_names)
    reflection.enable_server_reflection(
        (*reflection_names, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot bind {host}:{port}")
    handle = GrpcServer(server, bound, health_servicer, names)
    handle.set_serving(False)
    return server, handle
