"""The run directory's state, process identity and stopping, and the port plan of `gati up`.

Fast: real processes, but only `sleep`s and the CLI's argument handling, no services.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from cli.local import down, status, up
from cli.local import state as st
from cli.local.options import UsageError, options_from_args
from launch import ports


def gati(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def spawned() -> Iterator[list[subprocess.Popen]]:
    """Shell processes in their own sessions; every group is killed at the end, whatever happens."""
    procs: list[subprocess.Popen] = []
    yield procs
    for p in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=5)


def spawn(procs: list[subprocess.Popen], script: str) -> st.ProcessRecord:
    p = subprocess.Popen(["sh", "-c", script], start_new_session=True)
    procs.append(p)
    time.sleep(0.2)  # let the shell start its children (and set its traps)
    return st.ProcessRecord(
        name=f"sh{len(procs)}",
        address="127.0.0.1:1",
        check=st.CHECK_TCP,
        pid=p.pid,
        pgid=p.pid,
        create_time=st.process_create_time(p.pid),
    )


def gone(proc: psutil.Process) -> bool:
    """Exited (a zombie counts: orphans wait for an init that may be slow to reap them)."""
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def reaper(procs: list[subprocess.Popen]):
    return lambda: [p.poll() for p in procs]


# --- state file -------------------------------------------------------------------------------


def test_state_round_trip_is_private(tmp_path: Path) -> None:
    state = st.StackState(run_dir=str(tmp_path / "run"), redis_password="s3cret")
    state.processes.append(
        st.ProcessRecord(
            name="inference",
            address="127.0.0.1:8001",
            check=st.CHECK_GRPC,
            pid=123,
            pgid=123,
            create_time=1.5,
            ports={"grpc": 8001, "metrics": 8002},
            health_service="inference.GRPCInferenceService",
            log="/x/inference.log",
            started_at=2.5,
        )
    )
    state.processes.append(st.ProcessRecord(name="redis", address="h:6379", check=st.CHECK_REDIS))
    st.save(state)
    path = tmp_path / "run" / "state.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "run").stat().st_mode) == 0o700
    loaded = st.load(tmp_path / "run")
    assert loaded == state
    assert loaded.get("redis").external and not loaded.get("inference").external
    assert loaded.get("trainer") is None
    st.remove(tmp_path / "run")
    st.remove(tmp_path / "run")  # twice is fine
    assert st.load(tmp_path / "run") is None


def test_state_of_another_version_is_refused(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text('{"version": 99, "run_dir": "x"}')
    with pytest.raises(ValueError, match="version 99"):
        st.load(tmp_path)


def test_lock_is_exclusive(tmp_path: Path) -> None:
    busy = pytest.raises(st.StackBusyError, match="another `gati up`")
    with st.locked(tmp_path), busy, st.locked(tmp_path):
        pass
    with st.locked(tmp_path):  # released
        pass


def test_default_run_dir_is_dot_gati_here(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert st.resolve_run_dir(None) == tmp_path / ".gati"
    assert st.resolve_run_dir("rel") == tmp_path / "rel"


# --- identity and stopping --------------------------------------------------------------------


def test_a_reused_pid_is_not_ours(spawned) -> None:
    record = spawn(spawned, "sleep 60")
    assert st.is_alive(record)
    reused = st.ProcessRecord(**{**record.__dict__, "create_time": record.create_time - 100})
    assert not st.is_alive(reused)
    # ... and stopping it must not touch the process that now has that pid.
    assert st.stop_process(reused, timeout=1) == "not running"
    assert spawned[0].poll() is None


def test_stop_ends_the_whole_group(spawned) -> None:
    record = spawn(spawned, "sleep 60 & sleep 60 & wait")
    members = st.group_members(record)
    assert len(members) == 3  # the shell and its two sleeps
    assert st.stop_process(record, timeout=5, reap=reaper(spawned)) == "stopped"
    assert st.group_members(record) == []
    assert all(gone(m) for m in members)


def test_stop_kills_what_ignores_sigterm(spawned) -> None:
    # An ignored signal stays ignored across exec, so the sleep ignores SIGTERM too.
    record = spawn(spawned, "trap '' TERM; sleep 60 & wait")
    deadline = time.monotonic() + 10
    while len(st.group_members(record)) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)  # the shell has set its trap and started the sleep (a loaded machine)
    assert len(st.group_members(record)) == 2
    outcome = st.stop_process(record, timeout=0.5, reap=reaper(spawned))
    assert outcome.startswith("killed")
    assert st.group_members(record) == []


def test_stop_all_goes_in_reverse_and_skips_external(spawned, tmp_path: Path) -> None:
    first, second = spawn(spawned, "sleep 60"), spawn(spawned, "sleep 60")
    external = st.ProcessRecord(name="redis", address="h:1", check=st.CHECK_REDIS)
    state = st.StackState(run_dir=str(tmp_path), processes=[first, external, second])
    results = st.stop_all(state, timeout=5, reap=reaper(spawned))
    assert results == [(second.name, "stopped"), (first.name, "stopped")]
    assert st.stop_all(state, timeout=5) == [
        (second.name, "not running"),
        (first.name, "not running"),
    ]


# --- gati up: options, ports, a previous stack ------------------------------------------------


def up_args(**overrides) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    up.add_arguments(parser)
    args = parser.parse_args([])
    for key, value in overrides.items():
        setattr(args, key, value)
    return args


def test_weights_are_required_for_builtin_models(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--weights PATH is required for resnet56"):
        options_from_args(up_args())
    with pytest.raises(UsageError, match="no such file"):
        options_from_args(up_args(weights=str(tmp_path / "missing.th")))
    opts = options_from_args(up_args(arch="mypkg.models:build"))  # a user factory may not
    assert opts.weights is None and opts.model == "build"


def test_up_booleans_are_flag_pairs(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    up.add_arguments(parser)
    off = ["--no-cache", "--no-trainer", "--no-records", "--no-pin"]
    opts = options_from_args(parser.parse_args(["--arch", "m:f", *off]))
    assert (opts.cache, opts.trainer, opts.records, opts.pin) == (False, False, False, False)
    opts = options_from_args(parser.parse_args(["--arch", "m:f", "--no-pin", "--pin"]))
    assert (opts.cache, opts.trainer, opts.records, opts.pin) == (True, True, True, True)
    with pytest.raises(SystemExit):  # a plain flag takes no value
        parser.parse_args(["--cache", "false"])


def test_up_without_weights_exits_2_and_starts_nothing(tmp_path: Path) -> None:
    result = gati("up", "--run-dir", "run", cwd=tmp_path)
    assert result.returncode == 2
    assert "--weights PATH is required" in result.stderr
    assert not (tmp_path / "run").exists()


def test_port_layout_from_base(tmp_path: Path) -> None:
    weights = tmp_path / "w.th"
    weights.write_bytes(b"x")
    opts = options_from_args(up_args(weights=str(weights), ports=20000))
    assert up.plan_ports(opts) == {
        "inference": 20001,
        "inference_http": 20000,
        "inference_metrics": 20002,
        "kafka": 20092,
        "redis": 20079,
        "cache": 20011,
        "cache_metrics": 20012,
        "trainer": 20021,
        "trainer_metrics": 20022,
    }
    # the default base gives the services the ports they default to themselves
    default = options_from_args(up_args(weights=str(weights)))
    assert default.port_base + ports.PORT_OFFSETS["inference"] == 8001
    assert default.port_base + ports.PORT_OFFSETS["inference_http"] == 8000
    lean = options_from_args(
        up_args(weights=str(weights), ports=0, cache=False, trainer=False, records=False)
    )
    assert set(up.plan_ports(lean)) == {"inference", "inference_http", "inference_metrics"}
    free = up.plan_ports(options_from_args(up_args(weights=str(weights), ports=0)))
    assert len(set(free.values())) == len(free) == 9


def test_free_ports_are_distinct_and_outside_the_ephemeral_range() -> None:
    """Outgoing connections take their local ports from the ephemeral range; a port picked
    there can be taken between the pick and the server's bind (a CI failure once)."""
    low, high = ports._ephemeral_range()
    picked = [ports.free_port() for _ in range(300)]
    assert len(set(picked)) == len(picked)
    assert all(not low <= p <= high for p in picked)
    assert all(ports.bindable("127.0.0.1", p) for p in picked[:20])


def test_a_taken_port_is_named(tmp_path: Path) -> None:
    weights = tmp_path / "w.th"
    weights.write_bytes(b"x")
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports.free_port()))
        s.listen()
        base = s.getsockname()[1] - ports.PORT_OFFSETS["cache"]
        opts = options_from_args(up_args(weights=str(weights), ports=base))
        with pytest.raises(UsageError, match=rf"port {base + 11} \(cache\) is in use"):
            up.plan_ports(opts)


def test_a_running_stack_is_refused_and_a_dead_one_cleared(spawned, tmp_path: Path, capsys) -> None:
    record = spawn(spawned, "sleep 60")
    st.save(st.StackState(run_dir=str(tmp_path), processes=[record]))
    refusal = up._clear_previous(tmp_path, sys.stdout)
    assert refusal is not None and "already running" in refusal and str(record.pid) in refusal
    assert st.load(tmp_path) is not None
    st.stop_process(record, timeout=5, reap=reaper(spawned))
    assert up._clear_previous(tmp_path, sys.stdout) is None
    assert st.load(tmp_path) is None
    assert "cleaning up a stopped stack" in capsys.readouterr().out


# --- gati down / status with nothing running --------------------------------------------------


def test_down_and_status_with_nothing_running(tmp_path: Path) -> None:
    result = gati("down", "--run-dir", "never", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "nothing running" in result.stdout
    assert not (tmp_path / "never").exists()  # down does not create the run directory
    result = gati("status", "--run-dir", "never", cwd=tmp_path)
    assert result.returncode == status.EXIT_NOT_RUNNING
    result = gati("status", "--run-dir", "never", "--json", cwd=tmp_path)
    assert result.returncode == status.EXIT_NOT_RUNNING
    assert '"running": false' in result.stdout
    result = gati("status", "--json", "out.json", "--run-dir", "never", cwd=tmp_path)
    assert result.returncode == status.EXIT_NOT_RUNNING and result.stdout == ""
    assert json.loads((tmp_path / "out.json").read_text())["running"] is False
    assert down.stop(tmp_path / "never", out=sys.stdout) == 0


def test_status_reports_an_exited_process(spawned, tmp_path: Path) -> None:
    record = spawn(spawned, "sleep 60")
    state = st.StackState(run_dir=str(tmp_path), complete=True, processes=[record])
    [alive] = status.collect(state, timeout=0.2)
    assert alive.state == "running" and alive.health == "unreachable" and not alive.ok
    st.stop_process(record, timeout=5, reap=reaper(spawned))
    [dead] = status.collect(state, timeout=0.2)
    assert dead.state == "exited" and dead.health == "-" and not dead.ok
    table = status.render(state, [dead])
    assert table.splitlines()[0].split() == [
        "NAME", "PID", "STATE", "HEALTH", "ENDPOINT", "METRICS", "LOG",
    ]  # fmt: skip
    assert table.splitlines()[1].split()[:5] == [
        record.name, str(record.pid), "exited", "-", "grpc://127.0.0.1:1",
    ]  # fmt: skip
