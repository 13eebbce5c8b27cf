"""services.common.liveness on a real gRPC server: a dead essential thread turns health off."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry, generate_latest

from services.common.grpc_server import GrpcServer, build_server
from services.common.liveness import Liveness

SERVICE = "test.Service"
DEADLINE_S = 30.0  # generous: CI shares two busy cores


def health(port: int) -> str:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=SERVICE), timeout=5
        )
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def wait_for(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not predicate():
        assert time.monotonic() < deadline, f"{what}: not within {DEADLINE_S}s"
        time.sleep(0.05)


@pytest.fixture
def server() -> Iterator[GrpcServer]:
    grpc_server, handle = build_server("127.0.0.1", 0, 2, 1 << 20, (SERVICE,), ())
    grpc_server.start()
    yield handle
    handle.stop(0)


def alive(registry: CollectorRegistry, thread: str) -> float | None:
    return registry.get_sample_value("gati_thread_alive", {"thread": thread})


def test_a_dead_thread_turns_health_off_and_keeps_it_off(server: GrpcServer) -> None:
    registry = CollectorRegistry()
    liveness = Liveness(registry, watch_s=0.02)
    release = threading.Event()
    worker = threading.Thread(target=release.wait, name="worker", daemon=True)
    worker.start()
    liveness.watch("worker", worker)
    liveness.watch("other", lambda: True)
    liveness.guard(server)
    server.set_serving(True)
    try:
        assert health(server.port) == "SERVING"
        assert alive(registry, "worker") == 1.0
        labels = {"thread": "worker"}
        assert registry.get_sample_value("gati_background_errors_total", labels) == 0.0

        liveness.error("worker")
        assert registry.get_sample_value("gati_background_errors_total", labels) == 1.0
        assert health(server.port) == "SERVING"  # an error caught is not a death

        release.set()  # the thread ends
        worker.join(DEADLINE_S)
        wait_for(lambda: health(server.port) == "NOT_SERVING", "health off after the death")
        assert alive(registry, "worker") == 0.0
        assert alive(registry, "other") == 1.0
        assert liveness.dead() == ["worker"]
        server.set_serving(True)  # whoever asks for SERVING now is refused
        assert health(server.port) == "NOT_SERVING"
    finally:
        liveness.close()
    assert liveness._watcher is not None and not liveness._watcher.is_alive()


def test_a_check_that_raises_counts_as_dead_and_never_breaks_a_scrape() -> None:
    registry = CollectorRegistry()
    liveness = Liveness(registry)

    def broken() -> bool:
        raise RuntimeError("cannot tell")

    liveness.watch("broken", broken)
    assert liveness.dead() == ["broken"]
    assert b'gati_thread_alive{thread="broken"} 0.0' in generate_latest(registry)
