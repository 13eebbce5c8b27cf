"""`gati up` / `status` / `down` end to end: real broker, Redis and services as processes.

The commands run as subprocesses exactly as a user types them; the services are started
detached, so each test's teardown stops whatever its run directory still records, whether
or not `gati down` worked.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import psutil
import pytest
import redis

from cli.local import state as st
from gati import names
from gati.api import grpc_service_pb2, grpc_service_pb2_grpc

MODEL = "resnet20"
UP_TIMEOUT = 300  # three torch processes loading at once on two shared cores


def gati(*args: str, cwd: Path, timeout: float = UP_TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def gone(pid: int) -> bool:
    """No such process, or only a zombie waiting for its (re)parent to reap it."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def group_alive(pgid: int) -> list[int]:
    pids = []
    for proc in psutil.process_iter():
        with contextlib.suppress(ProcessLookupError, psutil.Error):
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                pids.append(proc.pid)
    return pids


@pytest.fixture
def run_dir(tmp_path: Path) -> Iterator[Path]:
    """A run directory whose processes are stopped at the end, even if `gati down` failed."""
    path = tmp_path / "run"
    seen: dict[int, float | None] = {}
    yield path
    with contextlib.suppress(Exception):
        state = st.load(path)
        if state is not None:
            seen.update({p.pid: p.create_time for p in state.processes if p.pid})
            st.stop_all(state, timeout=10)
            st.remove(path)
    for pid, created in seen.items():  # last resort, should never find anything
        if not gone(pid) and st.process_create_time(pid) == created:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)


def infer(address: str, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scores [N, 10] and labels [N], one ModelInfer call per image (batch of one)."""
    scores, labels = [], []
    with grpc.insecure_channel(address) as channel:
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for image in images:  # [32, 32, 3] uint8
            request = grpc_service_pb2.ModelInferRequest(
                model_name=MODEL,
                inputs=[
                    grpc_service_pb2.ModelInferRequest.InferInputTensor(
                        name=names.INPUT_IMAGE, datatype="UINT8", shape=[1, 32, 32, 3]
                    )
                ],
                raw_input_contents=[image.tobytes()],
            )
            reply = stub.ModelInfer(request, timeout=30)
            outputs = {
                o.name: (o, raw)
                for o, raw in zip(reply.outputs, reply.raw_output_contents, strict=True)
            }
            score, raw = outputs[names.OUTPUT_SCORES]
            assert score.datatype == "FP32" and list(score.shape) == [1, 10]
            scores.append(np.frombuffer(raw, np.float32).reshape(1, 10))
            label, raw = outputs[names.OUTPUT_LABEL]
            assert label.datatype == "INT64" and list(label.shape) == [1]
            labels.append(np.frombuffer(raw, np.int64))
    return np.concatenate(scores), np.concatenate(labels)


def metric(record: st.ProcessRecord, name: str) -> float:
    """Sum of a Prometheus metric over its labels, scraped from the process's endpoint."""
    url = f"http://127.0.0.1:{record.ports['metrics']}/metrics"
    with urllib.request.urlopen(url, timeout=5) as reply:
        text = reply.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and line[len(name) : len(name) + 1] in (" ", "{")
    )


def started_pids(stdout: str) -> dict[str, int]:
    """`gati up` prints `  NAME  pid PID  ADDRESS` as it starts each process."""
    return {m[1]: int(m[2]) for m in re.finditer(r"^\s+(\w+)\s+pid (\d+)", stdout, re.M)}


def test_up_serves_then_down_leaves_nothing(
    run_dir: Path, tmp_path: Path, resnet20_weights: Path, assets: Path
) -> None:
    up = gati(
        "up", "--run-dir", str(run_dir), "--ports", "0",
        "--model", MODEL, "--arch", "resnet20", "--weights", str(resnet20_weights),
        cwd=tmp_path,
    )  # fmt: skip
    assert up.returncode == 0, up.stdout + up.stderr
    assert "gati is up" in up.stdout and "gati down --run-dir" in up.stdout

    state = st.load(run_dir)
    assert state is not None and state.complete
    expected = ["kafka", "redis", "cache", "trainer", "inference"]
    assert [p.name for p in state.processes] == expected
    assert started_pids(up.stdout) == {p.name: p.pid for p in state.processes}
    for record in state.processes:
        assert st.is_alive(record), record.name
        assert record.pgid == record.pid  # each in its own session, outliving `gati up`
        assert Path(record.log).is_file() and Path(record.log).parent == run_dir / "logs"
    assert stat.S_IMODE((run_dir / "state.json").stat().st_mode) == 0o600

    # Cores as `gati up` places them: the model alone on the first, one torch thread (the
    # default), the other services on the rest, the trainer niced.
    cores = sorted(psutil.Process().cpu_affinity())
    procs = {r.name: psutil.Process(r.pid) for r in state.processes}
    if len(cores) >= 2:
        assert procs["inference"].cpu_affinity() == cores[:1]
        assert procs["cache"].cpu_affinity() == cores[1:]
        assert procs["trainer"].cpu_affinity() == cores[1:]
    assert procs["trainer"].nice() >= 10
    log = Path(state.get("inference").log)
    deadline = time.monotonic() + 10
    while "torch intra-op threads: 1" not in log.read_text():
        assert time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(0.2)

    # The private Redis asks for its generated password, which no command line shows.
    password = state.redis_password
    assert password and len(password) >= 24
    assert state.redis_url == f"redis://{state.get('redis').address}/0"
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(state.redis_url).ping()
    assert redis.Redis.from_url(state.redis_url, password=password).ping()
    for record in state.processes:
        assert password not in " ".join(psutil.Process(record.pid).cmdline())
    # ... and the cache service got it: it is subscribed to bundle announcements.
    client = redis.Redis.from_url(state.redis_url, password=password)
    deadline = time.monotonic() + 30
    while client.pubsub_numsub(names.BUNDLE_CHANNEL)[0][1] < 1:
        assert time.monotonic() < deadline, "the cache service never subscribed"
        time.sleep(0.2)
    client.close()

    # Traffic through the inference service: the stock Open Inference Protocol request.
    data = np.load(assets / "cifar10" / "test.npz")
    images, truth = data["x"][:16], data["y"][:16]
    scores, labels = infer(state.get("inference").address, images)
    np.testing.assert_array_equal(labels, scores.argmax(axis=1))
    assert (labels == truth).sum() >= 12  # ResNet-20 is 91.7% accurate on this set

    # The records of those requests went through the broker to the trainer (the topology is
    # wired, not just up): read from both services' Prometheus endpoints.
    deadline = time.monotonic() + 90  # the trainer's first group join takes a few seconds
    while True:
        sent = metric(state.get("inference"), "gati_records_sent_total")
        consumed = metric(state.get("trainer"), "gati_trainer_records_consumed_total")
        if sent >= len(images) and consumed >= len(images):
            break
        assert time.monotonic() < deadline, f"records sent {sent}, consumed {consumed}"
        time.sleep(0.5)

    status = gati("status", "--run-dir", str(run_dir), "--json", cwd=tmp_path, timeout=60)
    assert status.returncode == 0, status.stdout + status.stderr
    report = json.loads(status.stdout)
    assert report["healthy"] and report["complete"]
    assert "password" not in status.stdout
    assert [(p["name"], p["state"]) for p in report["processes"]] == [
        (n, "running") for n in expected
    ]
    health = {p["name"]: p["health"] for p in report["processes"]}
    assert health == {
        "kafka": "listening",
        "redis": "PONG",
        "cache": "SERVING",
        "trainer": "SERVING",
        "inference": "SERVING",
    }
    rest = {p["name"]: p["rest"] for p in report["processes"]}
    assert [n for n, url in rest.items() if url] == ["inference"]  # only it speaks REST
    with urllib.request.urlopen(f"{rest['inference']}/v2/health/ready", timeout=10) as reply:
        assert reply.status == 200  # the address status gives is the one REST answers on
    table = gati("status", "--run-dir", str(run_dir), cwd=tmp_path, timeout=60)
    assert table.returncode == 0 and "healthy" in table.stdout
    assert rest["inference"] in table.stdout

    # A second stack in the same run directory is refused; the first one is untouched.
    again = gati(
        "up", "--run-dir", str(run_dir), "--ports", "0", "--arch", "resnet20",
        "--weights", str(resnet20_weights), cwd=tmp_path, timeout=60,
    )  # fmt: skip
    assert again.returncode == 1
    assert "already running" in again.stderr and "gati down" in again.stderr
    assert st.load(run_dir) == state

    ports = [port for p in state.processes for port in p.ports.values()]
    assert all(port_open(port) for port in ports)
    down = gati("down", "--run-dir", str(run_dir), cwd=tmp_path, timeout=120)
    assert down.returncode == 0, down.stdout + down.stderr
    # reverse order of start, each stopped by SIGTERM (not killed)
    lines = [ln.split() for ln in down.stdout.splitlines() if ln.startswith("  ")]
    assert [(ln[0], ln[3]) for ln in lines] == [(n, "stopped") for n in reversed(expected)]

    for record in state.processes:
        assert gone(record.pid), record.name
        assert group_alive(record.pgid) == [], record.name
        assert not st.is_alive(record)
    assert [port for port in ports if port_open(port)] == []
    assert not (run_dir / "state.json").exists()
    assert not (run_dir / "redis").exists()  # its config held the password
    assert (run_dir / "logs" / "inference.log").stat().st_size > 0  # logs are kept

    # down again, and status: nothing running, both fine
    assert gati("down", "--run-dir", str(run_dir), cwd=tmp_path, timeout=60).returncode == 0
    assert gati("status", "--run-dir", str(run_dir), cwd=tmp_path, timeout=60).returncode == 3


def test_failed_start_prints_the_log_and_stops_everything(
    run_dir: Path, tmp_path: Path, redis_url: str
) -> None:
    bad = tmp_path / "broken.th"
    bad.write_bytes(b"these are not the weights you are looking for")
    up = gati(
        "up", "--run-dir", str(run_dir), "--ports", "0", "--no-trainer",
        "--model", MODEL, "--arch", "resnet20", "--weights", str(bad),
        "--redis-url", redis_url,
        cwd=tmp_path,
    )  # fmt: skip
    assert up.returncode == 1, up.stdout + up.stderr
    assert "gati up: inference: process exited with 1 before SERVING" in up.stderr
    assert f"lines of {run_dir / 'logs' / 'inference.log'}" in up.stderr
    assert "Traceback" in up.stderr  # the service's own error, from its log
    assert "stopping what was started" in up.stderr

    pids = started_pids(up.stdout)
    assert set(pids) == {"kafka", "cache", "inference"}  # the external Redis is not ours
    assert all(gone(pid) and group_alive(pid) == [] for pid in pids.values())
    assert not (run_dir / "state.json").exists()
    # the external Redis is left alone
    assert redis.Redis.from_url(redis_url).ping()
    down = gati("down", "--run-dir", str(run_dir), cwd=tmp_path, timeout=60)
    assert down.returncode == 0 and "nothing running" in down.stdout


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_interrupted_up_leaves_nothing(
    sig: signal.Signals, run_dir: Path, tmp_path: Path, resnet20_weights: Path
) -> None:
    """SIGTERM: `gati up` stops what it started. SIGKILL: its state lets `gati down` do it."""
    argv = [
        sys.executable, "-m", "cli.main", "up", "--run-dir", str(run_dir), "--ports", "0",
        "--no-cache", "--no-trainer", "--arch", "resnet20", "--weights", str(resnet20_weights),
    ]  # fmt: skip
    up = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        state = None
        while state is None or state.get("inference") is None:  # launched, still loading
            assert time.monotonic() < deadline and up.poll() is None, up.communicate()
            time.sleep(0.05)
            with contextlib.suppress(ValueError):  # a file being replaced reads fine or not
                state = st.load(run_dir)
        up.send_signal(sig)
        _, err = up.communicate(timeout=60)
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
    if sig == signal.SIGTERM:
        assert up.returncode == 130, err
        assert b"interrupted; stopped what was started" in err
        assert not (run_dir / "state.json").exists()
    else:
        assert (run_dir / "state.json").exists()  # gati up had no chance to clean up
        down = gati("down", "--run-dir", str(run_dir), cwd=tmp_path, timeout=60)
        assert down.returncode == 0, down.stdout + down.stderr
    for record in state.processes:
        assert gone(record.pid) and group_alive(record.pgid) == [], record.name
        for port in record.ports.values():
            assert not port_open(port), (record.name, port)
