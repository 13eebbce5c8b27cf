"""The report's figures (bench.analysis) on hand-made arrays: exact values."""

from __future__ import annotations

import numpy as np
import pytest

from bench import analysis
from bench.analysis import Requests


def _req(latency_ms, labels, hit=None, exact=None, layers=None, sent_s=None) -> Requests:
    n = len(latency_ms)
    return Requests(
        np.asarray(latency_ms, dtype=np.float64),
        np.asarray(labels, dtype=np.int64),
        np.zeros(n, bool) if hit is None else np.asarray(hit, bool),
        np.zeros(n, bool) if exact is None else np.asarray(exact, bool),
        tuple(layers or [""] * n),
        np.ones(n, dtype=np.int64),
        np.arange(n, dtype=np.float64) if sent_s is None else np.asarray(sent_s, np.float64),
        0,
        float(n),
    )


def test_windows_finds_the_worst_of_every_window_not_only_aligned_ones() -> None:
    agree = np.ones(3000, dtype=bool)
    agree[900:1100] = False  # straddles the aligned boundary at 1000
    worst, start = analysis.windows(agree, 1000)
    assert worst == pytest.approx(0.8) and 100 <= start <= 900
    assert analysis.windows(np.array([1, 0, 1, 1]), 1000) == (0.75, 0)  # shorter: the whole


def test_summarize_pairs_requests_with_plain_serving() -> None:
    plain = _req([10, 10, 10, 10], [0, 1, 2, 3])
    fast = _req([2, 2, 11, 11], [0, 1, 2, 0], hit=[1, 1, 0, 0])
    base, truth = np.array([0, 1, 2, 3]), np.array([0, 1, 0, 3])
    s = analysis.summarize(fast, base, truth, plain)
    assert s["mean_ms"] == 6.5 and s["speedup_mean"] == pytest.approx(40 / 26)
    assert s["hit_rate"] == 0.5 and s["exact_hit_rate"] == 0
    assert s["agreement"] == 0.75 and s["worst_window_agreement"] == 0.75
    assert s["top1"] == 0.5
    assert s["miss_overhead"] == pytest.approx(1.1)  # requests 2 and 3: 11 ms vs 10 ms
    assert s["hit_speedup"] == pytest.approx(5.0)
    assert analysis.summarize(plain, base, truth, None)["speedup_mean"] is None


def test_exits_count_layers_exact_and_full() -> None:
    r = _req(
        [1] * 5,
        [0] * 5,
        hit=[1, 1, 0, 0, 1],
        exact=[0, 0, 1, 0, 0],
        layers=["layer2.0", "layer1.3", "", "", "layer2.0"],
    )
    assert analysis.exits(r) == {"layer2.0": 2, "layer1.3": 1, "exact": 1, "full": 1}


def test_change_points_and_series() -> None:
    assert analysis.change_points(np.array([0, 0, 1, 1, 1, 2])) == [2, 5]
    r = _req([1, 3, 5, 7, 9], [0, 0, 0, 0, 1], hit=[1, 0, 0, 1, 1])
    s = analysis.series(r, np.zeros(5, dtype=np.int64), bin_size=2)
    assert s["start"] == [0, 2, 4]
    assert s["mean_ms"] == [2.0, 6.0, 9.0] and s["hit_rate"] == [0.5, 0.5, 1.0]
    assert s["agreement"] == [1.0, 1.0, 0.0] and s["t_s"] == [1.0, 3.0, 4.0]


def test_recovery_after_a_change() -> None:
    # 400 requests, 4 per second; change at 200; hits resume 50 requests after it.
    hit = np.zeros(400, dtype=bool)
    hit[:200:2] = True  # 50% before the change
    hit[250::2] = True  # 50% again from request 250
    sent = np.arange(400) / 4.0
    (row,) = analysis.recovery(hit, sent, [200], window=20)
    assert row["before_hit_rate"] == 0.5 and row["steady_hit_rate"] == 0.5
    assert row["dip_hit_rate"] == 0.0 and row["status"] == "recovered"
    # the first trailing window of 20 with >= 9 hits (0.9 x 50%) is 247..266: hits 250..266
    assert row["recovery_requests"] == 67 and row["recovery_s"] == pytest.approx(66 / 4)


def test_recovery_without_hits_or_with_short_phases() -> None:
    none = analysis.recovery(np.zeros(400, bool), np.arange(400.0), [200], window=20)
    assert none[0]["status"] == "no steady-state hits" and none[0]["recovery_s"] is None
    short = analysis.recovery(np.ones(400, bool), np.arange(400.0), [390], window=20)
    assert short[0]["status"] == "phase too short to judge"
    gone = np.zeros(400, bool)
    gone[:200:2] = True  # 50% before the change, none after it
    lost = analysis.recovery(gone, np.arange(400.0), [200], window=20)
    assert lost[0]["status"] == "hits lost" and lost[0]["recovery_s"] is None


def _row(speedup, agreement=0.995, worst=0.99, top1=0.93, overhead=1.01) -> dict:
    return {
        "speedup_mean": speedup,
        "agreement": agreement,
        "worst_window_agreement": worst,
        "top1": top1,
        "miss_overhead": overhead,
    }


def test_goals_are_judged_per_system() -> None:
    figures = {
        "instance-locality": {"online": _row(3.2), "static": _row(1.4)},
        "uniform": {"online": _row(1.2, worst=0.98, overhead=1.08), "static": _row(1.1)},
    }
    base_top1 = {"instance-locality": 0.932, "uniform": 0.933}
    rec = {"online": [{"status": "recovered", "recovery_s": 12.0}]}
    goals = {(g.name, g.workload, g.system): g for g in analysis.goals(figures, base_top1, rec)}
    assert goals[("mean latency reduction", "instance-locality", "online")].met is True
    assert goals[("mean latency reduction", "instance-locality", "static")].met is False
    assert goals[("mean latency reduction", "class-locality", "online")].met is None
    assert goals[("agreement in every window", "uniform", "online")].met is False
    assert goals[("miss path vs plain serving", "uniform", "online")].met is False
    drop = goals[("top-1 drop vs base model (points)", "uniform", "online")]
    assert drop.measured == pytest.approx(0.3) and drop.met is True
    assert goals[("recovery to 90% of steady hit rate (s)", "drift", "online")].met is True
    rec["online"].append({"status": "hits lost", "recovery_s": None})
    again = {(g.name, g.system): g for g in analysis.goals(figures, base_top1, rec)}
    assert again[("recovery to 90% of steady hit rate (s)", "online")].met is False
    assert ("recovery to 90% of steady hit rate (s)", "drift", "static") not in goals


def test_exit_profile_pairs_each_exit_with_plain_serving() -> None:
    plain = _req([10, 10, 10, 8], [0] * 4)
    r = _req([4, 12, 10, 9], [0] * 4, hit=[1, 1, 0, 0], layers=["a", "b", "", ""])
    prof = analysis.exit_profile(r, plain)
    assert list(prof) == ["a", "b", "full"]
    assert prof["a"] == {"requests": 1, "mean_ms": 4.0, "plain_mean_ms": 10.0, "ratio": 2.5}
    assert prof["b"]["ratio"] == pytest.approx(10 / 12)
    assert prof["full"]["requests"] == 2 and prof["full"]["ratio"] == pytest.approx(18 / 19)
