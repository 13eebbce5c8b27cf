"""The ports of a local stack: a fixed layout from a base port, or free ones from the OS.

The default base gives the services the ports they default to themselves (inference on
Triton's 8001), so clients need no change; `--ports 0` gives every endpoint a free port, for
tests and for stacks side by side.
"""

from __future__ import annotations

import contextlib
import socket

from gati import names

LOCALHOST = "127.0.0.1"
DEFAULT_PORT_BASE = 8000
# Port of each endpoint relative to the base. The broker and a private Redis sit beside the
# services instead of on 9092 / 6379, where a machine often runs its own.
PORT_OFFSETS = {
    "inference": names.INFERENCE_PORT - DEFAULT_PORT_BASE,
    "inference_metrics": names.INFERENCE_METRICS_PORT - DEFAULT_PORT_BASE,
    "cache": names.CACHE_PORT - DEFAULT_PORT_BASE,
    "cache_metrics": names.CACHE_METRICS_PORT - DEFAULT_PORT_BASE,
    "trainer": names.TRAINER_PORT - DEFAULT_PORT_BASE,
    "trainer_metrics": names.TRAINER_METRICS_PORT - DEFAULT_PORT_BASE,
    "redis": 79,
    "kafka": 92,
}
LOOPBACK_ONLY = ("kafka", "redis")  # always bound to 127.0.0.1, whatever --host says
MAX_BASE = 65535 - max(PORT_OFFSETS.values())


class PortInUseError(OSError):
    """A port of the layout is taken; the message names it and what it was for."""


def plan(wanted: list[str], base: int, host: str) -> dict[str, int]:
    """Port of each wanted endpoint: `base + offset`, or free ones when `base` is 0."""
    if base == 0:
        return free_ports(wanted)
    assert 1024 <= base <= MAX_BASE, base
    ports = {name: base + PORT_OFFSETS[name] for name in wanted}
    for name, port in ports.items():
        bind_host = LOCALHOST if name in LOOPBACK_ONLY else host
        if not bindable(bind_host, port):
            raise PortInUseError(
                f"port {port} ({name.replace('_', ' ')}) is in use on {bind_host}; "
                "choose another base with --ports BASE, or --ports 0 for free ports"
            )
    return ports


def free_ports(wanted: list[str]) -> dict[str, int]:
    """Distinct free ports: every socket stays bound until all are picked."""
    with contextlib.ExitStack() as stack:
        ports = {}
        for name in wanted:
            s = stack.enter_context(socket.socket())
            s.bind((LOCALHOST, 0))
            ports[name] = s.getsockname()[1]
        return ports


def bindable(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is ok
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True
