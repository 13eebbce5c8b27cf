"""`gati bench latency` end to end on a small run: real processes, the JSON contract.

A smoke run's figures are not measurements (this machine is shared), so only the contract,
ranges and load-independent facts are checked.
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import numpy as np

from gati.bench.latency import RTT_BOUNDS, rtt_summary
from gati.local.processes import gati_argv

SIDE = {"mean_ms", "p50_ms", "p99_ms", "throughput_rps", "top1"}


def test_latency_bench_end_to_end(tmp_path: Path, assets: Path, resnet20_weights: Path) -> None:
    out = tmp_path / "latency.json"
    argv = gati_argv(
        "bench",
        "latency",
        "--arch",
        "resnet20",
        "--weights",
        str(resnet20_weights),
        "--data",
        str(assets / "cifar10" / "test.npz"),
        "--fit-stop",
        "400",
        "--start",
        "400",
        "--stop",
        "700",
        "--requests",
        "60",
        "--workloads",
        "uniform,instance-locality",
        "--concurrency",
        "1,2",
        "--threads",
        "1",
        "--json",
        str(out),
        "--log-dir",
        str(tmp_path / "work"),
    )
    done = subprocess.run(argv, capture_output=True, text=True, timeout=420)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "no probes active, caches on vs off" in done.stdout

    report = json.loads(out.read_text())
    assert report["empty_plan"]["caches_off"]["n"] == 60
    assert report["empty_plan"]["overhead_mean"] > 0
    results = report["results"]
    assert [(r["workload"], r["concurrency"]) for r in results] == [
        ("uniform", 1),
        ("uniform", 2),
        ("instance-locality", 1),
        ("instance-locality", 2),
    ]
    for r in results:
        assert set(r["caches_off"]) >= SIDE
        assert set(r["caches_on"]) >= SIDE | {"hit_rate", "agreement"}
        assert r["caches_off"]["errors"] == 0 and r["caches_on"]["errors"] == 0
        assert 0.0 <= r["caches_on"]["hit_rate"] <= 1.0
        assert 0.9 <= r["caches_on"]["agreement"] <= 1.0
        assert r["speedup_mean"] > 0 and r["speedup_p50"] > 0
        if report["active_probes"] == 0:  # nothing looked up: served exactly as caches off
            assert r["caches_on"]["hit_rate"] == 0.0
            assert r["caches_on"]["top1"] == r["caches_off"]["top1"]
            assert r["lookup_rtt"]["n"] == 0


def test_rtt_p50_from_histogram_buckets() -> None:
    before = np.zeros(len(RTT_BOUNDS))
    # 10 round trips at 0.15 ms, 10 at 0.35 ms: cumulative bucket counts
    after = np.array([np.sum(np.array([0.15e-3] * 10 + [0.35e-3] * 10) <= b) for b in RTT_BOUNDS])
    got = rtt_summary(before, after.astype(float))
    assert got["n"] == 20
    assert 0.1 < got["p50_ms"] <= 0.2  # the 10th of 20 lies in the (0.1, 0.2] ms bucket
    assert rtt_summary(before, before) == {"n": 0, "p50_ms": None}
    assert RTT_BOUNDS[-1] == math.inf
