"""The ports of a local stack: a fixed layout from a base port, or free ones from the OS.

The default base gives the services the ports they default to themselves (inference on
Triton's 8001), so clients need no change; `--ports 0` gives every endpoint a free port, for
tests and for stacks side by side.
"""

from __future__ import annotations

import random
import socket
import threading
from pathlib import Path

from gati import names

LOCALHOST = "127.0.0.1"
DEFAULT_PORT_BASE = 8000
# Port of each endpoint relative to the base. The broker and a private Redis sit beside the
# services instead of on 9092 / 6379, where a machine often runs its own.
PORT_OFFSETS = {
    "inference": names.INFERENCE_PORT - DEFAULT_PORT_BASE,
    "inference_http": names.INFERENCE_HTTP_PORT - DEFAULT_PORT_BASE,
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


# Ports handed out by this process, so two calls never return the same one.
_handed_out: set[int] = set()
_handed_out_lock = threading.Lock()
_LOWEST_PICKED = 10000


def _ephemeral_range() -> tuple[int, int]:
    """The kernel's range for the local ports of outgoing connections."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, picked below the kernel's ephemeral range.

    Why not bind port 0: the OS then picks from the ephemeral range, and between closing the
    probe socket and the server binding it any outgoing connection (a client dialling Redis)
    may take the same port as its local end: "Address already in use" (seen once in CI)."""
    low, high = _ephemeral_range()
    top = low - 1 if low - 1 > _LOWEST_PICKED + 1000 else 65535
    bottom = _LOWEST_PICKED if top == low - 1 else high + 1
    with _handed_out_lock:
        for _ in range(200):
            port = random.randint(bottom, top)
            if port not in _handed_out and bindable(LOCALHOST, port):
                _handed_out.add(port)
                return port
    raise OSError(f"no free port found in {bottom}..{top}")


def free_ports(wanted: list[str]) -> dict[str, int]:
    """Distinct free ports, one per wanted endpoint."""
    return {name: free_port() for name in wanted}


def bindable(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is ok
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True
