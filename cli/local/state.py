"""The run directory of a local stack: what `gati up` started, where, and how to find it again.

`gati up` writes `state.json` after every process it starts (so even an interrupted start can
be cleaned up), `gati status` reads it, `gati down` stops what it lists and removes it.
A pid alone is not an identity (the kernel reuses pids), so each record also keeps the
process's start time; a process only counts as ours when both match. That is what makes
`gati down` safe to run twice, or after a reboot.

Layout of a run directory (default `.gati/` under the current directory):
    state.json   this module's file, mode 0600 (it holds the private Redis password)
    lock         flock'ed by `gati up` / `gati down` so two never run at once here
    logs/*.log   one log file per process
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

DEFAULT_RUN_DIR = ".gati"
STATE_FILE = "state.json"
LOCK_FILE = "lock"
LOG_DIR = "logs"
STATE_VERSION = 1
# Start times from psutil are floats rounded by the kernel's clock ticks; equal within this.
_CREATE_TIME_TOLERANCE = 0.05

# How each process is checked for health (see cli.local.status).
CHECK_GRPC = "grpc"  # grpc.health.v1 Check on `address` for `health_service`
CHECK_REDIS = "redis"  # PING (with AUTH) on `address`
CHECK_TCP = "tcp"  # the port accepts connections (the Kafka broker)


class StackBusyError(RuntimeError):
    """Another `gati up` or `gati down` holds this run directory's lock."""


@dataclass
class ProcessRecord:
    """One process of the stack, or an external server it uses (then pid is None)."""

    name: str  # kafka, redis, cache, trainer, inference
    address: str  # host:port clients connect to
    check: str  # CHECK_GRPC, CHECK_REDIS or CHECK_TCP
    pid: int | None = None  # None: not started by gati (an external Redis)
    pgid: int | None = None  # its own process group (start_new_session), == pid
    create_time: float | None = None  # psutil's start time, to tell pid reuse apart
    ports: dict[str, int] = field(default_factory=dict)  # {"grpc": 8001, "metrics": 8002}
    health_service: str | None = None  # grpc.health.v1 service name
    log: str | None = None  # absolute path of its log file
    started_at: float = 0.0  # time.time() when started

    @property
    def external(self) -> bool:
        return self.pid is None


@dataclass
class StackState:
    run_dir: str
    created_at: float = field(default_factory=time.time)
    complete: bool = False  # every process reported healthy once
    owner_pid: int = field(default_factory=os.getpid)  # the `gati up` that wrote it
    redis_url: str | None = None  # the Redis the services use (private or external)
    redis_password: str | None = None  # the private redis-server's generated AUTH password
    signing_keys: str | None = None  # the generated key directory that signs bundles, records
    tls: dict[str, str] | None = None  # under --tls, the stack's ClientTls files: ca, cert, key
    processes: list[ProcessRecord] = field(default_factory=list)
    version: int = STATE_VERSION

    def get(self, name: str) -> ProcessRecord | None:
        return next((p for p in self.processes if p.name == name), None)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> StackState:
        raw = json.loads(text)
        if raw.get("version") != STATE_VERSION:
            raise ValueError(f"state file version {raw.get('version')!r}, expected {STATE_VERSION}")
        procs = [ProcessRecord(**p) for p in raw.pop("processes", [])]
        return cls(**raw, processes=procs)


def resolve_run_dir(run_dir: str | os.PathLike | None) -> Path:
    return Path(run_dir or DEFAULT_RUN_DIR).expanduser().resolve()


def state_path(run_dir: Path) -> Path:
    return run_dir / STATE_FILE


def load(run_dir: Path) -> StackState | None:
    """The recorded stack, or None when nothing was started here (or it was stopped)."""
    try:
        text = state_path(run_dir).read_text()
    except FileNotFoundError:
        return None
    return StackState.from_json(text)


def save(state: StackState) -> None:
    """Write atomically (a reader never sees half a file), readable by the owner only."""
    run_dir = Path(state.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = run_dir / (STATE_FILE + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(state.to_json())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, state_path(run_dir))


def remove(run_dir: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        state_path(run_dir).unlink()


@contextlib.contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    """Hold the run directory's lock; raise StackBusyError at once if someone else holds it."""
    run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StackBusyError(
                f"another `gati up` or `gati down` is working in {run_dir}; wait for it"
            ) from None
        yield
    finally:
        os.close(fd)  # closing releases the flock


# --- processes: identity, liveness, stopping ------------------------------------------------


def process_create_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _is_ours(proc: psutil.Process, record: ProcessRecord) -> bool:
    """Same pid *and* same start time: the process we started, not a later one reusing it."""
    try:
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return (
            record.create_time is None
            or abs(proc.create_time() - record.create_time) < _CREATE_TIME_TOLERANCE
        )
    except psutil.Error:
        return False


def is_alive(record: ProcessRecord) -> bool:
    """The recorded process is running (zombies and reused pids do not count)."""
    if record.pid is None:
        return False
    try:
        return _is_ours(psutil.Process(record.pid), record)
    except psutil.Error:
        return False


def group_members(record: ProcessRecord) -> list[psutil.Process]:
    """Live processes of the record's process group, if that group is still ours.

    A pgid cannot be handed out again while any process is in that group, so leftover
    children of a dead leader are ours; a *new* leader with the same pid and another start
    time means the group is someone else's.
    """
    if record.pgid is None:
        return []
    try:
        # Only the start time decides, never the status: a leader dying while we look (alive,
        # then a zombie, then reaped) must not make its still-running children vanish.
        leader = psutil.Process(record.pgid)
        started = leader.create_time()
        if (
            record.create_time is not None
            and abs(started - record.create_time) >= _CREATE_TIME_TOLERANCE
        ):
            return []  # the pid was handed out again, so no process of our group is left
    except psutil.Error:
        pass  # the leader is gone: its leftover children are still ours
    members = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == record.pgid and proc.status() != psutil.STATUS_ZOMBIE:
                members.append(proc)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return members


def stop_process(
    record: ProcessRecord, timeout: float, reap: Callable[[], None] | None = None
) -> str:
    """SIGTERM the record's process group, wait up to `timeout`, SIGKILL what is left.

    `reap` (optional) is called while waiting: the process that started the children must
    wait() for them, or they linger as zombies. Returns what happened, for the user.
    """
    if record.external or not group_members(record):
        return "not running"
    _signal_group(record, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if reap is not None:
            reap()
        if not group_members(record):
            return "stopped"
        time.sleep(0.05)
    _signal_group(record, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        if reap is not None:
            reap()
        if not group_members(record):
            return f"killed (no exit within {timeout:.0f}s of SIGTERM)"
        time.sleep(0.05)
    left = ", ".join(str(p.pid) for p in group_members(record))
    return f"still running after SIGKILL: {left}"


def _signal_group(record: ProcessRecord, sig: int) -> None:
    assert record.pgid is not None
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(record.pgid, sig)


def stop_all(
    state: StackState, timeout: float, reap: Callable[[], None] | None = None, out=None
) -> list[tuple[str, str]]:
    """Stop every process, last started first (clients before the servers they use)."""
    results = []
    for record in reversed(state.processes):
        if record.external:
            continue
        outcome = stop_process(record, timeout, reap)
        results.append((record.name, outcome))
        if out is not None:
            print(f"  {record.name:<10} pid {record.pid:<8} {outcome}", file=out, flush=True)
    return results
