"""The live memory: its math, the fit's calibration of its rule, and shipping the rule.

Synthetic streams: rows drawn from a few prototypes per class (a recurring working set, small
noise) mixed with never-seen random points whose base label is random, so a radius that
admits the far neighbours of a new point would serve wrong answers.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from cli.probes_fit import add_arguments, config_from_args
from gati.probes.fitting.costs import CostModel
from gati.probes.fitting.entries import active_prefix, layer_entry
from gati.probes.fitting.fit import FitConfig, fit_bundle
from gati.probes.fitting.live_calibration import MIN_SUPPORT, calibrate_layer, replay
from gati.probes.fitting.synthetic import random_roles
from gati.probes.serving.bundle import Bundle, BundleError
from gati.probes.serving.fitness import FitnessError, fit_to_serve
from gati.probes.serving.live import NO_LABEL, LiveMemory, LiveRule, neighbours, standardisation
from gati.probes.serving.runtime import ProbeRuntime

C, K = 16, 10  # keys: 16 channels at pool1
PROTOS = np.random.default_rng(7).normal(size=(3 * K, C))  # three prototypes per class
PROTO_LABEL = np.arange(3 * K) % K


def recurring_stream(n: int, seed: int, new_share: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """(x [n, C] at pool1, base labels [n]): recurrences of the prototypes, plus new points."""
    rng = np.random.default_rng(seed)
    proto = rng.integers(0, len(PROTOS), n)
    x = PROTOS[proto] + 0.05 * rng.normal(size=(n, C))
    base = PROTO_LABEL[proto].copy()
    new = rng.random(n) < new_share
    x[new] = rng.normal(size=(int(new.sum()), C))
    base[new] = rng.integers(0, K, int(new.sum()))
    return x.astype(np.float32), base


def calibrate(x, base, groups=None, **cfg):
    config = FitConfig(**cfg)
    train = np.arange(0, len(x), 2)
    return calibrate_layer("cut", x, C, "pool1", "pool1", base, train, groups, config)


# ---- the math -------------------------------------------------------------------------------
def test_neighbours_on_a_hand_example() -> None:
    keys = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 3.0]], np.float32)
    labels = np.array([1, 1, 2])
    q = np.array([[0.0, 0.5]], np.float32)
    d, lab = neighbours(keys, labels, q, 2)  # [0,0] (d2 .25) and [1,0] (d2 1.25): both 1
    assert lab.tolist() == [1] and d[0] == pytest.approx(np.sqrt(1.25 / 2), rel=1e-5)
    d, lab = neighbours(keys, labels, q, 3)  # [0,3] joins with label 2: no common label
    assert lab.tolist() == [NO_LABEL] and d[0] == pytest.approx(np.sqrt(6.25 / 2), rel=1e-5)
    d, lab = neighbours(keys, labels, q, 4)  # fewer remembered than k
    assert lab.tolist() == [NO_LABEL] and np.isinf(d[0])


def test_live_memory_keeps_the_newest_rows_up_to_capacity() -> None:
    memory = LiveMemory(dim=1, capacity=3, ttl_s=100.0)
    memory.add(np.arange(5, dtype=np.float32)[:, None], np.array([0, 0, 1, 1, 1]), now=0.0)
    assert memory.size(now=1.0) == 3
    # rows 0 and 1 (label 0) went out first: the 3 nearest to 0.0 are now 2, 3, 4 (label 1)
    d, lab = memory.query(np.zeros((1, 1), np.float32), 3, now=1.0)
    assert lab.tolist() == [1] and d[0] == pytest.approx(4.0)
    memory.add(np.array([[9.0]], np.float32), np.array([2]), now=2.0)  # replaces row 2
    _, lab = memory.query(np.zeros((1, 1), np.float32), 3, now=2.0)
    assert lab.tolist() == [NO_LABEL]  # 3, 4 (label 1) and 9 (label 2)


def test_live_memory_rows_expire_after_ttl() -> None:
    memory = LiveMemory(dim=2, capacity=8, ttl_s=10.0)
    memory.add(np.zeros((2, 2), np.float32), np.array([3, 3]), now=0.0)
    memory.add(np.ones((2, 2), np.float32), np.array([4, 4]), now=5.0)
    assert memory.size(now=9.0) == 4 and memory.size(now=12.0) == 2
    _, lab = memory.query(np.zeros((1, 2), np.float32), 2, now=12.0)
    assert lab.tolist() == [4]  # the label-3 rows no longer answer
    d, lab = memory.query(np.zeros((1, 2), np.float32), 1, now=20.0)
    assert lab.tolist() == [NO_LABEL] and np.isinf(d[0]) and memory.size(now=20.0) == 0


# ---- calibration ----------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["empirical", "ltt"])
def test_recurrences_get_a_radius_that_holds_on_a_fresh_stream(mode: str) -> None:
    x, base = recurring_stream(3000, seed=0)
    cal = calibrate(x, base, calibration=mode)
    assert cal.rule.radius > 0 and cal.units >= MIN_SUPPORT
    assert cal.share > 0.5 and cal.agreement >= 0.99
    x2, base2 = recurring_stream(3000, seed=1)  # the same kind of traffic, never seen
    dist, label = replay(cal.rule, x2, "pool1", base2, cal.capacity)
    hits = cal.rule.hits(dist, label)
    assert hits.mean() > 0.5
    assert (label[hits] == base2[hits]).mean() >= 0.99


def test_grouped_errors_count_once_per_group() -> None:
    """Three of the 30 prototypes have a base answer that flips between two labels, so their
    unanimous runs are wrong half the time. Per row those errors drown in the many right rows
    of the stable prototypes; per group each prototype weighs one, so 3 groups losing half
    their answers put agreement near 95% at any radius, and the rule stays off."""
    x, base = recurring_stream(3000, seed=0, new_share=0.0)
    groups = np.argmin(((x[:, None, :] - PROTOS[None]) ** 2).sum(-1), axis=1)
    rng = np.random.default_rng(5)
    flip = np.isin(groups, [0, 1, 2]) & (rng.random(len(x)) < 0.5)
    base = np.where(flip, (base + 1) % K, base)
    per_row = calibrate(x, base)
    assert per_row.rule.radius > 0 and per_row.units == per_row.answered
    assert per_row.agreement < 1.0  # the flipping prototypes' errors are in there
    assert calibrate(x, base, groups=groups).rule.radius == 0.0
    clean = calibrate(x, PROTO_LABEL[groups], groups=groups)  # same groups, stable answers
    assert clean.rule.radius > 0 and clean.units == len(PROTOS) < clean.answered


def test_distinct_points_of_mixed_labels_turn_the_rule_off() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2000, C)).astype(np.float32)
    base = rng.integers(0, 2, 2000)  # two labels: 1 in 16 rows still sees 5 unanimous ones
    for mode in ("empirical", "ltt"):
        cal = calibrate(x, base, calibration=mode)
        assert cal.rule.radius == 0.0 and not cal.rule.active and cal.answered == 0


def test_live_keys_use_the_coarser_of_the_wanted_and_the_probes_grid() -> None:
    rng = np.random.default_rng(0)
    x4 = rng.normal(size=(200, C * 16)).astype(np.float32)  # pool4 records
    base = rng.integers(0, K, 200)
    train = np.arange(100)
    for probe, wanted, expect in [("pool1", "pool2", "pool1"), ("pool4", "pool2", "pool2")]:
        cfg = FitConfig(live_reduction=wanted)
        cal = calibrate_layer("cut", x4, C, "pool4", probe, base, train, None, cfg)
        assert cal.rule.reduction == expect
        mu, _ = standardisation(x4[train], C, "pool4", expect)
        np.testing.assert_allclose(cal.rule.mu, mu)


@pytest.mark.parametrize("kw", [{"live_k": 0}, {"live_capacity": 3}, {"live_reduction": "pool3"}])
def test_fit_config_refuses_bad_live_settings(kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="live"):
        FitConfig(**kw)


def test_cli_no_live_turns_the_rule_off() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    base = ["--arch", "a", "--weights", "w", "--data", "d", "--bundle", "o"]
    assert config_from_args(parser.parse_args(base)).live
    cfg = config_from_args(parser.parse_args([*base, "--no-live", "--live-k", "3"]))
    assert not cfg.live and cfg.live_k == 3


# ---- shipping -------------------------------------------------------------------------------
def toy_fit(live: bool) -> Bundle:
    """A real fit on a toy model whose rows recur (each image appears about 8 times)."""
    cuts, c, k, n = ("a", "b"), 4, 3, 1200
    rng = np.random.default_rng(0)
    images = rng.integers(0, 150, n)
    img_logits = rng.normal(size=(150, k)).astype(np.float32)
    logits = img_logits[images] + 0.01 * rng.normal(size=(n, k)).astype(np.float32)
    proto = rng.normal(size=(len(cuts), 150, c * 16))
    acts = {
        cut: (proto[i][images] + 0.05 * rng.normal(size=(n, c * 16))).astype(np.float32)
        for i, cut in enumerate(cuts)
    }
    config = FitConfig(epochs=3, warm_epochs=0, variants=("knn",), live=live)
    return fit_bundle(
        acts,
        logits,
        channels=dict.fromkeys(cuts, c),
        cost=CostModel(cuts, (1.0, 1.0, 1.0)),
        model_id="toy",
        arch="toy",
        fingerprint="f" * 32,
        groups=images,
        lookup_ms={f"{cut}:knn": 0.01 for cut in cuts},
        config=config,
    )


def test_a_fit_ships_a_live_rule_per_active_layer() -> None:
    bundle = Bundle.from_bytes(toy_fit(live=True).to_bytes())
    assert bundle.layers, "recurring toy rows should make a plan"
    report = {r["layer"]: r for r in bundle.manifest["fit"]["live"]}
    runtime = fit_to_serve(bundle)
    for entry in bundle.layers:
        assert set(entry["live"]) == {"reduction", "k", "radius"}
        assert {entry["prefix"] + "live_mu", entry["prefix"] + "live_scale"} <= set(
            entry["tensors"]
        )
        rule = runtime.probe(entry["layer"]).live
        assert rule is not None and rule.radius == entry["live"]["radius"]
        assert report[entry["layer"]]["radius"] == rule.radius and rule.radius > 0
        assert 0 < report[entry["layer"]]["share"] <= 1
    off = toy_fit(live=False)
    assert all("live" not in e for e in off.layers) and off.manifest["fit"]["live"] == []


def live_bundle(radius: float = 0.3, k: int = 5, reduction: str = "pool1") -> Bundle:
    """One linear probe (reads pool1) of C channels with a live rule."""
    rng = np.random.default_rng(0)
    dim = C * {"pool1": 1, "pool2": 4, "pool4": 16}[reduction]
    rule = LiveRule(
        reduction, C, k, radius, rng.normal(size=dim).astype(np.float32), np.ones(dim, np.float32)
    )
    entry, tensors = layer_entry(
        "layer1.0",
        "linear",
        C,
        random_roles("linear", C, K, rng),
        prefix=active_prefix("layer1.0"),
        threshold=0.5,
        live=rule,
    )
    return Bundle.create(
        model_id="toy",
        arch="toy",
        model_fingerprint="f" * 32,
        layers=[entry],
        tensors=tensors,
        num_classes=K,
    )


def test_bundle_round_trip_keeps_the_live_rule() -> None:
    bundle = live_bundle()
    back = Bundle.from_bytes(bundle.to_bytes(), expected_fingerprint="f" * 32)
    assert back.layers[0]["live"] == {"reduction": "pool1", "k": 5, "radius": 0.3}
    rule = fit_to_serve(back).probe("layer1.0").live
    assert rule is not None and (rule.k, rule.radius, rule.reduction) == (5, 0.3, "pool1")
    np.testing.assert_array_equal(rule.mu, bundle.tensors["layers/layer1.0/live_mu"])
    np.testing.assert_array_equal(rule.scale, bundle.tensors["layers/layer1.0/live_scale"])


def reseal(bundle: Bundle, edit: Callable[[dict[str, Any], dict[str, np.ndarray]], None]) -> Bundle:
    """A buggy publisher's bundle: edited content, valid checksum."""
    m = copy.deepcopy(bundle.manifest)
    t = {name: v.copy() for name, v in bundle.tensors.items()}
    edit(m, t)
    return Bundle._sealed(m, t)


def set_live(key: str, value: Any) -> Callable[[dict[str, Any], dict[str, np.ndarray]], None]:
    def edit(m: dict[str, Any], _t: dict[str, np.ndarray]) -> None:
        m["layers"][0]["live"][key] = value

    return edit


def narrow(name: str) -> Callable[[dict[str, Any], dict[str, np.ndarray]], None]:
    def edit(m: dict[str, Any], t: dict[str, np.ndarray]) -> None:
        full = f"layers/layer1.0/{name}"
        t[full] = t[full][:-1].copy()
        m["layers"][0]["tensors"][full]["shape"] = [C - 1]

    return edit


def zero_scale(m: dict[str, Any], t: dict[str, np.ndarray]) -> None:
    t["layers/layer1.0/live_scale"][0] = 0.0


@pytest.mark.parametrize(
    "edit, problem",
    [
        (set_live("radius", -0.1), "live radius must be a finite number >= 0"),
        (set_live("radius", None), "live radius must be a finite number >= 0"),
        (set_live("k", 0), "live k must be an int >= 1"),
        (set_live("k", 2.5), "live k must be an int >= 1"),
        (set_live("reduction", "pool3"), "live reduction 'pool3' is unknown"),
        (set_live("reduction", "pool2"), "live reduction pool2 is finer than the probe's input"),
        (narrow("live_mu"), "live_mu has shape [15], the keys have 16 values"),
        (narrow("live_scale"), "live_scale has shape [15], the keys have 16 values"),
        (zero_scale, "live_scale must be finite and > 0"),
    ],
)
def test_fitness_refuses_a_bad_live_rule(edit, problem: str) -> None:
    bad = Bundle.from_bytes(reseal(live_bundle(), edit).to_bytes())  # intact, checksum and all
    with pytest.raises(FitnessError, match="live") as info:
        fit_to_serve(bad)
    assert problem in str(info.value)


def test_the_runtime_refuses_a_bad_live_rule_on_its_own() -> None:
    """Without the fitness checks the runtime is the last line: a BundleError, never a rule
    that answers by accident."""
    for edit in (set_live("radius", -1.0), set_live("k", 0), narrow("live_mu")):
        with pytest.raises(BundleError, match=r"layer 'layer1\.0'"):
            ProbeRuntime(reseal(live_bundle(), edit))
    with pytest.raises(BundleError, match="finer than the probe's input"):
        ProbeRuntime(live_bundle(reduction="pool2"))
