"""Shared pieces of the liveness tests: polling, health as a client sees it, `gati status` rows
for services running in this test process."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry

from cli.local import state as st
from cli.local import status

DEADLINE_S = 60.0  # generous: CI runs on two busy cores


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s"
        time.sleep(0.05)


def health(port: int, service: str) -> str:
    """What `gati status` and a load balancer see: grpc.health.v1 Check."""
    return status.grpc_health(f"127.0.0.1:{port}", service, timeout=5.0)


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def status_row(name: str, port: int, metrics_port: int, service: str) -> status.ProcessStatus:
    """`gati status`'s view of a service built in this process (recorded as this process)."""
    record = st.ProcessRecord(
        name=name,
        address=f"127.0.0.1:{port}",
        check=st.CHECK_GRPC,
        pid=os.getpid(),
        ports={"grpc": port, "metrics": metrics_port},
        health_service=service,
    )
    state = st.StackState(run_dir=os.getcwd(), complete=True, processes=[record])
    (row,) = status.collect(state, timeout=5.0)
    return row


def freshness_line(row: status.ProcessStatus) -> str:
    """The row's line in the table `gati status` prints below the process table."""
    table = status.render(st.StackState(run_dir=os.getcwd()), [row]).split("\n\n")[1]
    head, line = table.splitlines()
    assert head.split() == ["SERVICE", "FRESHNESS", "DEAD", "THREADS"]
    assert line.startswith(row.name + " ")
    return line
