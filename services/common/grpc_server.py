"""Build a gRPC server with health and reflection, and drain it (run it: services.common.shell).

Two kinds: a threaded server (`build_server`), where each RPC runs on a worker thread, for
services whose calls do blocking work (the model's forward pass); and `AioGrpcServer`, a
grpc.aio server on one event-loop thread, for the cache service, whose every call is answered
inline in tens of microseconds.

Building (bind, possibly port 0, return the port) is kept apart from running, so tests start
real servers in-process cheaply. Health says NOT_SERVING until the service calls
`set_serving`, and again while draining, so load balancers stop sending before we stop; and
whenever the handle's `failing` names a reason (a dead essential thread: "" and the service
names, so the liveness probe restarts the pod), whoever asks for SERVING. `unready` reasons
(stale bundles) turn off only the service names, the readiness probe: a restart would not
bring Redis back, and would lose the bundles held.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterable
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection


@dataclass
class GrpcServer:
    server: grpc.Server
    port: int
    health: health.HealthServicer
    service_names: tuple[str, ...]
    stopped: threading.Event = field(default_factory=threading.Event)
    # why health must stay NOT_SERVING whoever asks for SERVING ([] : nothing); each guard
    # (services.common.liveness: dead threads) adds its reasons to what was there
    failing: Callable[[], list[str]] = field(default=lambda: [])
    unready: Callable[[], list[str]] = field(default=lambda: [])  # service names only
    wanted: bool = False  # what the service last asked for (`refresh` applies it again)

    def set_serving(self, serving: bool = True) -> None:
        self.wanted = serving
        for name, status in _statuses(self, serving):
            self.health.set(name, status)

    def refresh(self) -> None:
        """Health again from what was asked and the reasons now (a watcher saw them change)."""
        self.set_serving(self.wanted)

    def stop(self, grace: float) -> None:
        """Refuse new RPCs, let in-flight ones finish within `grace` seconds."""
        self.set_serving(False)
        self.server.stop(grace).wait()
        self.stopped.set()


def build_server(
    host: str,
    port: int,
    workers: int,
    max_message_bytes: int,
    service_names: Iterable[str],
    reflection_names: Iterable[str],
    credentials: grpc.ServerCredentials | None = None,
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
    bound = bind(server, host, port, credentials)
    handle = GrpcServer(server, bound, health_servicer, names)
    handle.set_serving(False)
    return server, handle


class AioGrpcServer:
    """A grpc.aio server on its own event-loop thread, with the GrpcServer handle's interface.

    For a service whose RPCs are answered inline on the loop (no thread per stream, no hand-off
    between threads): an open stream costs a coroutine, not a worker, so idle streams cannot
    starve health checks or other calls, and a message is read, answered and written by the
    one thread that polled it.
    """

    def __init__(
        self,
        host: str,
        port: int,
        max_message_bytes: int,
        service_names: Iterable[str],
        reflection_names: Iterable[str],
        add_servicers: Callable[[grpc.aio.Server], None],
        credentials: grpc.ServerCredentials | None = None,
    ) -> None:
        self.service_names = tuple(service_names)
        self.stopped = threading.Event()
        self.failing: Callable[[], list[str]] = list  # as GrpcServer.failing
        self.unready: Callable[[], list[str]] = list  # as GrpcServer.unready
        self.wanted = False  # as GrpcServer.wanted
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="grpc-aio", daemon=True)
        self._thread.start()
        options = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.so_reuseport", 0),
        ]

        async def create() -> tuple[grpc.aio.Server, int]:
            server = grpc.aio.server(options=options)
            self.health = health.aio.HealthServicer()
            health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
            reflection.enable_server_reflection(
                (*reflection_names, health.SERVICE_NAME, reflection.SERVICE_NAME), server
            )
            add_servicers(server)
            bound = bind(server, host, port, credentials)
            await server.start()
            return server, bound

        try:
            self.server, self.port = self.run(create())
        except BaseException:
            self.loop.call_soon_threadsafe(self.loop.stop)
            raise
        self.set_serving(False)

    def run(self, coro: Any, timeout: float | None = 30.0) -> Any:
        """Run a coroutine on the server's loop from another thread; its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def set_serving(self, serving: bool = True) -> None:
        self.wanted = serving
        statuses = _statuses(self, serving)

        async def apply() -> None:
            for name, status in statuses:
                await self.health.set(name, status)

        if not self.loop.is_closed():
            self.run(apply())

    def refresh(self) -> None:
        """As GrpcServer.refresh."""
        self.set_serving(self.wanted)

    def stop(self, grace: float) -> None:
        """Refuse new RPCs, let in-flight ones finish within `grace` seconds, end the loop."""
        if self.stopped.is_set():
            return
        self.set_serving(False)
        self.run(self.server.stop(grace), timeout=grace + 30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        self.stopped.set()


def bind(
    server: grpc.Server | grpc.aio.Server,
    host: str,
    port: int,
    credentials: grpc.ServerCredentials | None,
) -> int:
    """Listen on host:port (TLS when `credentials`, see services.common.tls); the port bound.
    Health and reflection share it, so they sit behind the same credentials."""
    address = f"{host}:{port}"
    if credentials is None:
        bound = server.add_insecure_port(address)
    else:
        bound = server.add_secure_port(address, credentials)
    if bound == 0:
        raise OSError(f"cannot bind {address}")
    return bound


def _statuses(handle: GrpcServer | AioGrpcServer, serving: bool) -> list[tuple[str, int]]:
    """(health name, status) for "" (liveness) and each service name (readiness)."""
    on, off = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    alive = serving and not handle.failing()
    ready = alive and not handle.unready()
    return [("", on if alive else off), *((n, on if ready else off) for n in handle.service_names)]
