"""Looking at a running stack from outside: Prometheus metrics, health, resident memory.

Where to look comes from the services' descriptions (launch/topology.py), which fix every
port, so a restarted process is found where it was.
"""

from __future__ import annotations

import contextlib
import urllib.request
from dataclasses import dataclass

import grpc
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from launch.processes import ManagedProcess


@dataclass(frozen=True)
class Samples:
    """One scrape: (sample name, sorted label items) -> value."""

    values: dict[tuple[str, tuple[tuple[str, str], ...]], float]

    def get(self, name: str, **labels: str) -> float:
        """Sum of the samples called `name` whose labels include `labels` (0 when none)."""
        return sum(
            v
            for (n, items), v in self.values.items()
            if n == name and all((k, lv) in items for k, lv in labels.items())
        )

    def by(self, name: str, label: str) -> dict[str, float]:
        """Values of `name` per value of one label, e.g. drops per reason."""
        out: dict[str, float] = {}
        for (n, items), v in self.values.items():
            if n == name:
                key = dict(items).get(label, "")
                out[key] = out.get(key, 0.0) + v
        return out


def scrape(metrics_port: int, timeout: float = 5.0) -> Samples:
    """Every sample of the Prometheus endpoint on 127.0.0.1:`metrics_port`, one scrape."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=timeout) as r:
        text = r.read().decode()
    values = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            values[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return Samples(values)


def serving(address: str, service: str, timeout: float = 2.0) -> bool:
    """Does grpc.health.v1 at `address` say SERVING for `service` right now?"""
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def rss(proc: ManagedProcess) -> int:
    """Resident bytes of the process and its children (a service may fork helpers)."""
    p = psutil.Process(proc.pid)
    total = p.memory_info().rss
    for child in p.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            total += child.memory_info().rss
    return total
