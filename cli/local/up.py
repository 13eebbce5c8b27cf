"""`gati up`: the whole gati topology on one machine, as detached processes.

Starts, in this order: a Kafka-protocol broker (Tansu, in memory), Redis (a private
redis-server with a generated AUTH password, or one already listening given by --redis-url),
then the cache, trainer and inference services: on a machine with two or more cores the
model runs on the first core alone (one torch thread) and the others share the rest, the
trainer niced (services/common/cpus.py says why). Waits until the broker and Redis accept
connections and each service's grpc.health.v1 says SERVING, prints the endpoints, and returns.
The processes outlive this command (each in its own session, logging to the run directory);
`gati down` stops them. If anything fails to start, its log tail is printed and everything
already started is stopped again. Its options are cli/local/options.py; which processes run
with which flags is launch/topology.py.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import secrets
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO
from urllib.parse import urlsplit

from cli.local import state as st
from cli.local.options import UpOptions, UsageError, add_arguments, options_from_args
from gati import names
from launch import certificates
from launch import ports as layout
from launch.ports import LOCALHOST
from launch.processes import ManagedProcess, redis_argv, tansu_argv, wait_for_port, wait_serving
from launch.topology import Topology, connect_host

__all__ = ["add_arguments", "run", "start"]  # what cli/main.py and cli/demo.py call

LOG_TAIL_LINES = 40


class StackRunningError(RuntimeError):
    """A stack recorded in the run directory is still running."""


class StartError(RuntimeError):
    """A process did not come up; carries its name and log file for the tail."""

    def __init__(self, name: str, message: str, log: Path | None) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name
        self.log = log


def run(args: argparse.Namespace) -> int:
    try:
        opts = options_from_args(args)
    except UsageError as exc:
        print(f"gati up: {exc}", file=sys.stderr)
        return 2
    started = time.monotonic()
    try:
        with _signals_interrupt():
            state = start(opts, sys.stdout, sys.stderr)
    except UsageError as exc:  # a taken port: found before anything started
        print(f"gati up: {exc}", file=sys.stderr)
        return 2
    except (st.StackBusyError, StackRunningError) as exc:
        print(f"gati up: {exc}", file=sys.stderr)
        return 1
    except StartError:
        return 1  # start() printed the log tail and stopped what it had started
    except KeyboardInterrupt:
        print("gati up: interrupted; stopped what was started", file=sys.stderr)
        return 130
    from cli.local.status import collect, render

    elapsed = time.monotonic() - started
    print(f"\ngati is up in {opts.run_dir} ({elapsed:.1f}s)\n")
    print(render(state, collect(state)))
    down = "gati down" + ("" if _is_default_dir(opts.run_dir) else f" --run-dir {opts.run_dir}")
    print(f"\nstop everything with: {down}")
    return 0


# --- the start sequence -----------------------------------------------------------------------


def start(opts: UpOptions, out: TextIO, err: TextIO) -> st.StackState:
    """Start the stack and wait until it is healthy; on any failure stop it all and raise.

    Raises StackRunningError if a stack already runs in the run directory, StackBusyError
    if another `gati up` / `gati down` is working there, UsageError for a taken port, and
    StartError (after printing the log tail to `err`) if a process does not come up.
    """
    with st.locked(opts.run_dir):
        refusal = _clear_previous(opts.run_dir, out)
        if refusal:
            raise StackRunningError(refusal)
        return _start_all(opts, out, err)


def _start_all(opts: UpOptions, out: TextIO, err: TextIO) -> st.StackState:
    """Launch every process, then wait for health. The state file is rewritten after each
    start, so a `gati up` killed half-way still leaves `gati down` a complete list.
    """
    ports = plan_ports(opts)
    state = st.StackState(run_dir=str(opts.run_dir))
    launched: list[ManagedProcess] = []
    log_dir = opts.run_dir / st.LOG_DIR
    log_dir.mkdir(parents=True, exist_ok=True)
    topology = _trusted(opts, state)

    def launch(
        name: str,
        argv: list[str],
        address: str,
        check: str,
        port_map: dict[str, int],
        health_service: str | None = None,
        env: dict[str, str] | None = None,
    ) -> ManagedProcess:
        log = log_dir / f"{name}.log"
        if log.exists():  # keep one previous run's log; a failure's tail is this run's only
            log.replace(log.with_suffix(".log.1"))
        proc = ManagedProcess(name, argv, log, env).start()
        launched.append(proc)
        state.processes.append(
            st.ProcessRecord(
                name=name,
                address=address,
                check=check,
                pid=proc.pid,
                pgid=proc.pid,  # start_new_session: the leader of its own group
                create_time=st.process_create_time(proc.pid),
                ports=port_map,
                health_service=health_service,
                log=str(proc.log_path),
                started_at=time.time(),
            )
        )
        st.save(state)
        print(f"  {name:<10} pid {proc.pid:<8} {address}", file=out, flush=True)
        return proc

    def reap() -> None:  # our children turn into zombies until waited for
        for proc in launched:
            if proc.proc is not None:
                proc.proc.poll()

    try:
        print(f"starting gati in {opts.run_dir}", file=out, flush=True)
        kafka_address = None
        if topology.needs_kafka:
            kafka_address = f"{LOCALHOST}:{ports['kafka']}"
            argv = tansu_argv(ports["kafka"], LOCALHOST)
            kafka = launch("kafka", argv, kafka_address, st.CHECK_TCP, {"kafka": ports["kafka"]})
            _wait("kafka", kafka, wait_for_port, LOCALHOST, ports["kafka"], 30, kafka.proc)

        service_env = {names.ENV_PREFIX + "SIGNING_KEYS": str(state.signing_keys)}
        redis_url = None
        if topology.needs_redis:
            redis_url, password = _redis(opts, ports, state, launch, out)
            if password:
                service_env[names.ENV_PREFIX + "REDIS_PASSWORD"] = password

        services = topology.services(ports, redis_url, kafka_address)
        procs = [
            launch(s.name, s.argv(), s.address, st.CHECK_GRPC, s.ports, s.health, service_env)
            for s in services
        ]
        # Started together, waited for in order: on two cores the torch imports overlap.
        deadline = time.monotonic() + opts.timeout
        for service, proc in zip(services, procs, strict=True):
            left = max(deadline - time.monotonic(), 1.0)
            _wait(proc.name, proc, wait_serving, service, proc, left)
        state.complete = True
        st.save(state)
        return state
    except BaseException as exc:
        if isinstance(exc, StartError):
            _print_failure(exc, err)
        print("stopping what was started:", file=err, flush=True)
        st.stop_all(state, opts.stop_timeout, reap, out=err)
        recorded = {p.pid for p in state.processes}
        for proc in launched:  # interrupted between starting one and recording it
            if proc.pid not in recorded:
                proc.stop(opts.stop_timeout)
        st.remove(opts.run_dir)
        raise


def _trusted(opts: UpOptions, state: st.StackState) -> Topology:
    """The topology, signing on with a fresh key (and under --tls, a fresh CA and pair), the
    files recorded in the state so `gati status` and `gati probes publish` find them."""
    state.signing_keys = str(certificates.generate_signing_keys(opts.run_dir / "keys"))
    topology = opts.topology()
    if not opts.tls:
        return topology
    hosts = tuple(dict.fromkeys((*certificates.HOSTS, connect_host(opts.host))))  # --host too
    made = certificates.generate(opts.run_dir / "tls", names=("stack",), hosts=hosts)
    tls = made.client("stack")
    state.tls = dataclasses.asdict(tls)
    return dataclasses.replace(topology, tls=tls)


def _redis(
    opts: UpOptions, ports: dict[str, int], state: st.StackState, launch, out: TextIO
) -> tuple[str, str | None]:
    """(url, password) of the Redis the services use; starts a private one if needed."""
    if opts.redis_url:
        parts = urlsplit(opts.redis_url)
        address = f"{parts.hostname or LOCALHOST}:{parts.port or 6379}"
        _check_redis(opts.redis_url, opts.redis_password)
        state.processes.append(
            st.ProcessRecord(name="redis", address=address, check=st.CHECK_REDIS)
        )
        state.redis_url = opts.redis_url
        st.save(state)
        print(f"  {'redis':<10} {'external':<12} {address}", file=out, flush=True)
        return opts.redis_url, opts.redis_password
    password = secrets.token_urlsafe(24)
    state.redis_password = password
    data_dir = opts.run_dir / "redis"
    address = f"{LOCALHOST}:{ports['redis']}"
    redis = launch(
        "redis",
        redis_argv(ports["redis"], data_dir, password),
        address,
        st.CHECK_REDIS,
        {"redis": ports["redis"]},
    )
    _wait("redis", redis, wait_for_port, LOCALHOST, ports["redis"], 15, redis.proc)
    url = f"redis://{address}/0"
    state.redis_url = url
    st.save(state)
    return url, password


def _check_redis(url: str, password: str | None) -> None:
    import redis

    try:
        client = redis.Redis.from_url(url, password=password, socket_timeout=2.0)
        client.ping()
        client.close()
    except redis.RedisError as exc:
        raise StartError("redis", f"{url} does not answer PING: {exc}", None) from None


def _wait(name: str, proc: ManagedProcess, wait: Callable[..., None], *args: object) -> None:
    """Run `wait(*args)`; its failure becomes a StartError naming the process and its log."""
    try:
        wait(*args)
    except (RuntimeError, TimeoutError, OSError) as exc:
        raise StartError(name, str(exc), proc.log_path) from None


def _print_failure(exc: StartError, err: TextIO) -> None:
    print(f"\ngati up: {exc}", file=err)
    if exc.log is not None:
        tail = ManagedProcess(exc.name, [], exc.log).log_tail(LOG_TAIL_LINES)
        print(f"--- last {LOG_TAIL_LINES} lines of {exc.log} ---", file=err)
        print(tail or "(empty)", file=err)
        print("---", file=err, flush=True)


# --- ports ------------------------------------------------------------------------------------


def plan_ports(opts: UpOptions) -> dict[str, int]:
    """Every port the stack will listen on; fails early, naming the port, if one is taken."""
    wanted = opts.topology().endpoints(private_redis=not opts.redis_url)
    try:
        return layout.plan(wanted, opts.port_base, opts.host)
    except layout.PortInUseError as exc:
        raise UsageError(str(exc)) from None


# --- the run directory ------------------------------------------------------------------------


def _clear_previous(run_dir: Path, out: TextIO) -> str | None:
    """A reason to refuse if a stack runs here; otherwise clean up what a dead one left."""
    try:
        previous = st.load(run_dir)
    except ValueError as exc:
        return f"cannot read {st.state_path(run_dir)} ({exc}); remove it if nothing runs"
    if previous is None:
        return None
    alive = [p for p in previous.processes if st.is_alive(p)]
    if alive:
        listing = ", ".join(f"{p.name} (pid {p.pid})" for p in alive)
        flag = "" if _is_default_dir(run_dir) else f" --run-dir {run_dir}"
        return (
            f"a gati stack is already running in {run_dir}: {listing}. "
            f"See it with `gati status{flag}`, stop it with `gati down{flag}`, "
            "or start another one elsewhere with --run-dir DIR --ports BASE"
        )
    print(f"cleaning up a stopped stack's state in {run_dir}", file=out)
    st.stop_all(previous, 5.0)  # stray children of dead leaders, if any
    st.remove(run_dir)
    return None


def _is_default_dir(run_dir: Path) -> bool:
    return run_dir == st.resolve_run_dir(None)


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[None]:
    """SIGTERM / SIGHUP during start-up clean up like Ctrl-C does."""

    def interrupt(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
