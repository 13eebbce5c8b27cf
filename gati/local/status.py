"""`gati status`: is each process of the local stack alive, is it healthy, where is it.

Health is what a client would see: grpc.health.v1 for the services, PING (with AUTH) for
Redis, an accepted connection for the broker. Exit status: 0 when everything is running and
healthy, 1 when something is not, 3 when no stack is recorded in the run directory.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from dataclasses import asdict, dataclass
from urllib.parse import urlsplit

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gati import names
from gati.local import state as st

EXIT_HEALTHY, EXIT_UNHEALTHY, EXIT_NOT_RUNNING = 0, 1, 3
HEALTHY = {"SERVING", "PONG", "listening"}


@dataclass
class ProcessStatus:
    name: str
    pid: int | None
    state: str  # running, exited, external
    health: str  # SERVING / NOT_SERVING / PONG / listening / unreachable / ...
    address: str
    metrics: str | None  # Prometheus URL
    log: str | None

    @property
    def ok(self) -> bool:
        return self.state in ("running", "external") and self.health in HEALTHY


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-dir", default=st.DEFAULT_RUN_DIR, help="as given to `gati up`")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--timeout", type=float, default=1.0, help="seconds per health check (default 1)"
    )


def run(args: argparse.Namespace) -> int:
    run_dir = st.resolve_run_dir(args.run_dir)
    try:
        state = st.load(run_dir)
    except ValueError as exc:
        print(f"gati status: cannot read {st.state_path(run_dir)}: {exc}", file=sys.stderr)
        return EXIT_UNHEALTHY
    if state is None:
        if args.json:
            print(json.dumps({"run_dir": str(run_dir), "running": False, "processes": []}))
        else:
            print(f"nothing running in {run_dir}")
        return EXIT_NOT_RUNNING
    statuses = collect(state, args.timeout)
    healthy = all(s.ok for s in statuses)
    if args.json:
        print(json.dumps(as_json(state, statuses), indent=2))
    else:
        phase = "up" if state.complete else "starting (or an interrupted start)"
        print(f"gati in {run_dir}: {phase}, {'healthy' if healthy else 'NOT healthy'}\n")
        print(render(state, statuses))
    return EXIT_HEALTHY if healthy else EXIT_UNHEALTHY


def collect(state: st.StackState, timeout: float = 1.0) -> list[ProcessStatus]:
    return [_status(state, record, timeout) for record in state.processes]


def as_json(state: st.StackState, statuses: list[ProcessStatus]) -> dict:
    """Everything `status --json` prints (never the Redis password)."""
    return {
        "run_dir": state.run_dir,
        "running": True,
        "complete": state.complete,
        "healthy": all(s.ok for s in statuses),
        "redis_url": state.redis_url,
        "processes": [{**asdict(s), "ok": s.ok} for s in statuses],
    }


def render(state: st.StackState, statuses: list[ProcessStatus]) -> str:
    """A fixed-width table: one row per process."""
    header = ("NAME", "PID", "STATE", "HEALTH", "ENDPOINT", "METRICS", "LOG")
    rows = [
        (
            s.name,
            "-" if s.pid is None else str(s.pid),
            s.state,
            s.health,
            _endpoint(s),
            s.metrics or "-",
            _short_path(s.log) if s.log else "-",
        )
        for s in statuses
    ]
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    head = "  ".join(c.ljust(w) for c, w in zip(header, widths, strict=True)).rstrip()
    return "\n".join([head, *lines])


def _endpoint(s: ProcessStatus) -> str:
    scheme = {"kafka": "kafka://", "redis": "redis://"}.get(s.name, "grpc://")
    return scheme + s.address


def _short_path(path: str) -> str:
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def _status(state: st.StackState, record: st.ProcessRecord, timeout: float) -> ProcessStatus:
    proc_state = "running" if st.is_alive(record) else "exited"
    if record.external:
        proc_state = "external"
    health = "-" if proc_state == "exited" else _health(state, record, timeout)
    metrics = record.ports.get("metrics")
    host = record.address.rpartition(":")[0]
    return ProcessStatus(
        name=record.name,
        pid=record.pid,
        state=proc_state,
        health=health,
        address=record.address,
        metrics=f"http://{host}:{metrics}/metrics" if metrics else None,
        log=record.log,
    )


def _health(state: st.StackState, record: st.ProcessRecord, timeout: float) -> str:
    if record.check == st.CHECK_GRPC:
        return grpc_health(record.address, record.health_service or "", timeout)
    if record.check == st.CHECK_REDIS:
        url = state.redis_url or f"redis://{record.address}/0"
        return redis_health(url, _password(state), timeout)
    host, _, port = record.address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return "listening"
    except OSError:
        return "unreachable"


def grpc_health(address: str, service: str, timeout: float) -> str:
    """SERVING / NOT_SERVING / SERVICE_UNKNOWN, or the gRPC error code in lower case."""
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError as exc:
            code = exc.code()  # type: ignore[attr-defined]
            return "unreachable" if code == grpc.StatusCode.UNAVAILABLE else code.name.lower()
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def redis_health(url: str, password: str | None, timeout: float = 1.0) -> str:
    import redis

    client = redis.Redis.from_url(
        url,
        password=password or urlsplit(url).password,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
    )
    try:
        return "PONG" if client.ping() else "no PONG"
    except redis.AuthenticationError:
        return "auth failed"
    except redis.RedisError:
        return "unreachable"
    finally:
        client.close()


def _password(state: st.StackState) -> str | None:
    return state.redis_password or os.environ.get(names.ENV_PREFIX + "REDIS_PASSWORD")
