"""`gati status`, as a user runs it, shows how current a service is, read from its metrics.

The recorded stack is one real cache service built in this test process (real Redis, real
gRPC and metrics endpoints), so the command's whole path runs without three torch
processes; tests/local/test_local_stack.py covers the stack `gati up` starts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.local import state as st
from gati import names
from gati.store import BundleStore
from services.cache.config import CacheConfig
from services.cache.server import CacheServer, build
from tests.cache.helpers import MODEL, make_bundle


@pytest.fixture
def cache(redis_url: str) -> Iterator[CacheServer]:
    store = BundleStore(redis_url)
    store.publish(make_bundle(seed=1))
    store.close()
    config = CacheConfig(host="127.0.0.1", port=0, metrics_port=0, redis_url=redis_url)
    server = build(config)
    yield server
    server.stop(0)


def gati_status(run_dir: Path, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", "status", "--run-dir", str(run_dir), *flags],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_status_shows_the_cache_bundles_and_sync_age(tmp_path: Path, cache: CacheServer) -> None:
    assert cache.metrics_port is not None
    record = st.ProcessRecord(
        name="cache",
        address=f"127.0.0.1:{cache.port}",
        check=st.CHECK_GRPC,
        pid=os.getpid(),
        ports={"grpc": cache.port, "metrics": cache.metrics_port},
        health_service=names.HEALTH_CACHE,
    )
    run_dir = tmp_path / "run"
    st.save(st.StackState(run_dir=str(run_dir), complete=True, processes=[record]))

    report = gati_status(run_dir, "--json")
    assert report.returncode == 0, report.stdout + report.stderr
    (row,) = json.loads(report.stdout)["processes"]
    assert row["health"] == "SERVING" and row["ok"] and row["dead_threads"] == []
    assert row["freshness"]["bundles"] == {MODEL: 1}
    age = row["freshness"]["sync_age_seconds"]
    assert age is not None and age >= 0

    table = gati_status(run_dir)
    assert table.returncode == 0, table.stdout + table.stderr
    lines = table.stdout.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("SERVICE"))
    assert lines[head].split() == ["SERVICE", "FRESHNESS", "DEAD", "THREADS"]
    assert lines[head + 1].startswith("cache ")
    assert f"bundles {MODEL} v1, synced " in lines[head + 1]
    assert lines[head + 1].endswith(" -")
