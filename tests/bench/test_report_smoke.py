"""`gati bench report --quick` end to end: real processes, every file written, sane figures.

CI runs this so the command cannot rot; the figures of a smoke run are not measurements, so
only their presence, shapes and ranges are checked (and a few facts that hold at any load:
plain serving agrees with the base model, the exact-match cache hits on `repeats`).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np

from launch.topology import gati_argv

SYSTEMS = ("plain", "exact", "static", "online")
WORKLOADS = ("drift", "repeats")
SUMMARY_KEYS = {
    "requests",
    "errors",
    "mean_ms",
    "p50_ms",
    "p99_ms",
    "hit_rate",
    "exact_hit_rate",
    "agreement",
    "worst_window_agreement",
    "top1",
    "speedup_mean",
    "speedup_p50",
    "miss_overhead",
    "bundle_versions",
}


def test_quick_report_end_to_end(tmp_path: Path, assets: Path, resnet20_weights: Path) -> None:
    out = tmp_path / "report"
    argv = gati_argv(
        "bench",
        "report",
        "--quick",
        "--arch",
        "resnet20",
        "--weights",
        str(resnet20_weights),
        "--data",
        str(assets / "cifar10" / "test.npz"),
        "--report-dir",
        str(out),
        "--log-dir",
        str(tmp_path / "work"),
    )
    done = subprocess.run(argv, capture_output=True, text=True, timeout=420)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    names = {p.name for p in out.iterdir()}
    assert {"report.md", "report.json", "requests.npz", "latency_cdf.png", "exits.png"} <= names
    assert {f"timeline-{w}.png" for w in WORKLOADS} <= names
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000

    report = json.loads((out / "report.json").read_text())
    assert report["command"].startswith("gati bench report --quick")
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent
    )
    assert report["git"]["commit"] == head.stdout.strip()  # the commit it ran on
    assert report["settings"]["requests"] == 240
    assert list(report["workloads"]) == list(WORKLOADS)
    for w, entry in report["workloads"].items():
        assert list(entry["systems"]) == list(SYSTEMS)
        assert 0.5 < entry["base_top1"] <= 1.0
        for x, e in entry["systems"].items():
            s = e["summary"]
            assert set(s) >= SUMMARY_KEYS, (w, x)
            assert s["requests"] == 240 and s["errors"] == 0
            assert 0 < s["p50_ms"] <= s["p99_ms"] < 5000
            assert 0 <= s["hit_rate"] <= 1 and 0 <= s["exact_hit_rate"] <= 1
            assert 0.9 <= s["agreement"] <= 1 and s["worst_window_agreement"] <= s["agreement"]
            assert sum(e["exits"].values()) == 240
            assert len(e["series"]["mean_ms"]) == 3  # bins of 100 requests (the last of 40)
            if x == "plain":
                assert s["speedup_mean"] is None and s["hit_rate"] == 0
                assert s["agreement"] >= 0.99  # the base model, served: the same answers
            else:
                assert 0.1 < s["speedup_mean"] < 20
            if x != "exact":
                assert s["exact_hit_rate"] == 0  # the exact-match cache is off there
            if x in ("static", "online"):
                assert s["bundle_versions"][0] >= 1  # the offline bundle was in use
    drift = report["workloads"]["drift"]
    assert drift["change_points"] == [80, 160] and drift["recovery_window"] == 20
    assert [r["change_at"] for r in drift["systems"]["online"]["recovery"]] == [80, 160]
    assert report["workloads"]["repeats"]["systems"]["exact"]["summary"]["exact_hit_rate"] > 0.15
    assert report["workloads"]["drift"]["systems"]["online"]["trainer"]["rounds"] >= 0
    goals = {(g["goal"], g["workload"], g["system"]) for g in report["goals"]}
    assert ("agreement in every window", "repeats", "online") in goals
    assert report["bundle"]["version"] == 1

    with np.load(out / "requests.npz") as npz:
        assert npz["repeats/online/latency_ms"].shape == (240,)
        assert npz["drift/base"].shape == (240,)

    md = (out / "report.md").read_text()
    assert "gati bench report --quick" in md and report["git"]["commit"] in md
    assert "7.69x" in md and "![Latency CDF per workload](latency_cdf.png)" in md

    notes = tmp_path / "notes.md"
    notes.write_text("Hand-written analysis goes here.\n")
    again = subprocess.run(
        gati_argv("bench", "report", "--rerender", "--notes", str(notes), "--report-dir", str(out)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Hand-written analysis goes here." in (out / "report.md").read_text()
    assert json.loads((out / "report.json").read_text())["command"] == report["command"]
