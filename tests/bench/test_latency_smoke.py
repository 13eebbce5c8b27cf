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

from bench.histograms import quantiles
from bench.latency import FULL_MODEL, TARGETS, judge
from launch.topology import gati_argv
from services.inference.metrics import LOOKUP_RTT_BUCKETS

SIDE = {"mean_ms", "p50_ms", "p99_ms", "n"}


def test_latency_bench_end_to_end(tmp_path: Path, assets: Path, resnet20_weights: Path) -> None:
    out, report = tmp_path / "latency.json", tmp_path / "latency.md"
    argv = gati_argv(
        "bench", "latency", "--arch", "resnet20", "--weights", str(resnet20_weights),
        "--data", str(assets / "cifar10" / "test.npz"), "--fit-stop", "400",
        "--start", "400", "--stop", "700", "--requests", "60",
        "--workloads", "uniform,instance-locality",
        "--json", str(out), "--report", str(report), "--log-dir", str(tmp_path / "work"),
    )  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "bare gRPC ping-pong" in done.stdout
    assert "# gati bench latency: resnet20" in report.read_text()

    figures = json.loads(out.read_text())
    assert figures["pingpong_ms"]["n"] == 1000 and figures["pingpong_ms"]["p50"] > 0
    floors = figures["compute_floor_ms"]
    assert set(floors) == {*figures["active_probes"], FULL_MODEL} and floors[FULL_MODEL] > 0
    assert [r["workload"] for r in figures["results"]] == ["uniform", "instance-locality"]
    for r in figures["results"]:
        for target in TARGETS:
            assert set(r[target]) >= SIDE and r[target]["n"] == 60
            assert r["errors"][target] == 0
        assert 0.0 <= r["hit_rate"] <= 1.0
        assert r["live_hit_rate"] >= 0.0  # the cache service's own count, scraped per workload
        assert 0.9 <= r["agreement"] <= 1.0
        assert r["speedup_mean"] > 0 and r["speedup_vs_off"] > 0
        # plain serving is the base model: its answers are the ground truth's top-1 of it
        assert 0.5 <= r["top1_plain"] <= 1.0
        for cut, c in r["per_cut"].items():
            assert cut in figures["active_probes"] and c["hits"] >= 1
            assert c["floor_ms"] > 0
        if figures["active_probes"]:  # lookups were sent and the service measured them
            assert r["lookups"]["lookup_cost_ms"]["n"] > 0
        else:
            assert r["hit_rate"] == 0.0 and r["lookups"]["reply_ms"]["n"] == 0


def test_judge_counts_hits_per_cut_and_windows() -> None:
    n = 2000
    served = {f"{t}/latency_s": np.full(n, 0.010) for t in TARGETS}
    served["gati/latency_s"] = np.where(np.arange(n) % 2 == 0, 0.004, 0.011)
    served["gati/hit"] = np.arange(n) % 2 == 0
    served["gati/exit_layer"] = np.where(served["gati/hit"], "layer1.1", "")
    base = np.zeros(n, dtype=np.int64)
    served["gati/label"] = base.copy()
    served["gati/label"][1000:1030] = 1  # 30 disagreements, all in the second window
    served["plain/label"] = base
    for t in TARGETS:
        served[f"{t}/error"] = np.zeros(n, dtype=bool)
    got = judge(served, base, base, {"layer1.1": 3.5})
    assert got["hit_rate"] == 0.5
    assert math.isclose(got["agreement"], 1 - 30 / n)
    assert math.isclose(got["agreement_min_window"], 1 - 30 / 1000)
    assert math.isclose(got["miss_ratio"], 1.1)
    assert math.isclose(got["speedup_mean"], 10 / 7.5)
    assert got["per_cut"]["layer1.1"]["hits"] == 1000
    assert math.isclose(got["per_cut"]["layer1.1"]["mean_ms"], 4.0)
    assert got["per_cut"]["layer1.1"]["floor_ms"] == 3.5


def test_quantiles_from_histogram_buckets() -> None:
    bounds = LOOKUP_RTT_BUCKETS
    before = np.zeros(len(bounds) + 1)
    # 10 round trips at 0.15 ms, 10 at 0.35 ms: cumulative bucket counts
    obs = np.array([0.15e-3] * 10 + [0.35e-3] * 10)
    after = np.array([np.sum(obs <= b) for b in (*bounds, math.inf)], dtype=float)
    got = quantiles(bounds, before, after)
    assert got["n"] == 20
    assert 0.1e-3 < got["p50"] <= 0.2e-3  # the 10th of 20 lies in the (0.1, 0.2] ms bucket
    assert 0.3e-3 < got["p99"] <= 0.4e-3
    assert quantiles(bounds, before, before) == {"n": 0, "p50": None, "p99": None}
