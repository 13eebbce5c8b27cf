"""fit_bundle / evaluate_bundle on synthetic records with a known structure.

Three cuts of 4 channels; the activation at cut l is s_l * prototype[l][base label] + noise,
with s growing with depth, so early probes are right on some rows and deep ones on almost all.
"""

from __future__ import annotations

import numpy as np
import pytest

from gati.probes.fitting.costs import CostModel
from gati.probes.fitting.evaluate import evaluate_bundle
from gati.probes.fitting.fit import FitConfig, fit_bundle
from gati.probes.serving.bundle import Bundle
from gati.probes.serving.runtime import ProbeRuntime

K, C = 10, 4
CUTS = ("l0", "l1", "l2")
STRENGTH = (0.5, 0.9, 2.0)
COST = CostModel(CUTS, (1.0, 1.0, 1.0, 1.0))
LOOKUP = {f"{c}:{v}": 0.02 for c in CUTS for v in ("linear", "mlp", "conv")}
FAST = {"epochs": 12, "warm_epochs": 0}


def records(n: int, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1, (n, K)).astype(np.float32)
    logits[np.arange(n), rng.integers(0, K, n)] += 3.0
    base = logits.argmax(1)
    proto = np.random.default_rng(99).normal(size=(len(CUTS), K, C * 16))
    acts = {
        cut: (s * proto[i][base] + rng.normal(size=(n, C * 16))).astype(np.float16)
        for i, (cut, s) in enumerate(zip(CUTS, STRENGTH, strict=True))
    }
    return acts, logits


def fit(acts, logits, **kw):
    cfg = kw.pop(
        "config",
        FitConfig(**FAST, memory_size=400, variants=("linear", "mlp"), selector="logistic"),
    )
    return fit_bundle(
        acts,
        logits,
        channels=dict.fromkeys(CUTS, C),
        cost=kw.pop("cost", COST),
        model_id="toy",
        arch="toy",
        fingerprint="f" * 32,
        lookup_ms=kw.pop("lookup_ms", LOOKUP),
        config=cfg,
        **kw,
    )


@pytest.fixture(scope="module")
def fitted() -> Bundle:
    acts, logits = records(2400, 0)
    return fit(acts, logits)


def test_fit_produces_a_calibrated_valid_bundle(fitted: Bundle) -> None:
    b = Bundle.from_bytes(fitted.to_bytes(), expected_fingerprint="f" * 32)
    assert b.plan, "an obviously profitable cascade was not chosen"
    assert all(0.0 <= e["threshold"] <= 1.0 for e in b.layers)
    assert all(e["selector"]["kind"] == "logistic" for e in b.layers)
    assert all(b.tensors[e["prefix"] + "mem_keys"].shape[0] == 400 for e in b.layers)
    cal = b.manifest["fit"]["calibration"]
    assert cal["agreement"] >= 0.99 and cal["requests"] == b.layers[0]["calibration_size"]
    ProbeRuntime(b)


def test_held_out_agreement_and_speedup(fitted: Bundle) -> None:
    acts, logits = records(4000, 1)
    r = evaluate_bundle(fitted, acts, logits, cost=COST, lookup_ms={c: 0.02 for c in CUTS})
    c = r.cascade
    # calibrated on ~500 rows at exactly 0.99: held out within a few standard errors
    assert c.agreement >= 0.99 - 0.01
    assert c.speedup_expected > 1.3
    assert r.oracle.speedup >= c.speedup_expected
    assert len(r.windows) == 4 and r.windows[0].requests == 1000
    assert sum(layer.hit_rate for layer in r.layers) == pytest.approx(c.hit_rate)


def test_no_caches_when_lookups_are_too_dear() -> None:
    acts, logits = records(1200, 2)
    dear = {k: 5.0 for k in LOOKUP}
    b = fit(acts, logits, lookup_ms=dear)
    assert b.plan == []
    r = evaluate_bundle(b, acts, logits, cost=COST)
    assert r.cascade.speedup_expected == 1.0 and r.cascade.agreement == 1.0


def test_warm_start_reuses_previous_weights(fitted: Bundle) -> None:
    acts, logits = records(1200, 3)
    cfg = FitConfig(
        **FAST,
        memory_size=400,
        variants=("linear", "mlp"),
    )
    first = fit(acts, logits, config=cfg, keep_candidates=True)
    assert first.candidates
    again = fit(acts, logits, config=cfg, previous=first, keep_candidates=True)
    for entry in first.candidates:
        old, new = (
            first.layer_tensors(entry),
            again.layer_tensors(
                next(
                    e
                    for e in again.candidates
                    if (e["layer"], e["variant"]) == (entry["layer"], entry["variant"])
                )
            ),
        )
        for role in old:
            np.testing.assert_array_equal(old[role], new[role])


def test_max_softmax_and_ltt_modes() -> None:
    acts, logits = records(2400, 4)
    cfg = FitConfig(
        **FAST,
        variants=("linear", "mlp"),
        selector="max-softmax",
        calibration="ltt",
        delta=0.2,
        agreement_target=0.97,
    )
    b = fit(acts, logits, config=cfg)
    cal = b.manifest["fit"]["calibration"]
    assert cal["mode"] == "ltt" and cal["delta"] == 0.2
    assert b.plan and cal["p_value"] <= 0.2 and cal["hit_rate"] > 0.5
    # the baseline is served as calibrated confidence: max-softmax's ranking on a P(agree) scale
    assert all(
        e["selector"]["features"] == ["conf", "conf_logit"] and e["novelty"] is None
        for e in b.layers
    )


def test_grouped_records_and_explicit_calibration_rows() -> None:
    acts, logits = records(1500, 5)
    groups = np.arange(1500) // 5  # five requests per image
    cfg = FitConfig(**FAST, memory_size=400, variants=("linear", "mlp"))  # auto selector
    b = fit(acts, logits, groups=groups, calibration_rows=np.arange(1000, 1500), config=cfg)
    assert b.plan
    for e in b.layers:  # a memory travels exactly when the chosen selector reads it
        reads = any(f.startswith("nn") for f in e["selector"]["features"])
        assert (e["novelty"] is not None) == reads == (e["prefix"] + "mem_keys" in b.tensors)
    split = b.manifest["fit"]["split"]
    assert split["train"] == 1000 and split["select"] + split["threshold"] == 500
    assert b.manifest["fit"]["calibration"]["units"] == split["threshold"] // 5


def test_bad_records_refused() -> None:
    acts, logits = records(300, 6)
    acts["l1"] = acts["l1"][:, :10]
    with pytest.raises(ValueError, match=r"l1: expected pool4 records \[300, 64\]"):
        fit(acts, logits)
    with pytest.raises(ValueError, match="variants"):
        FitConfig(variants=("transformer",))


def recurring(
    groups: np.ndarray, seed: int, ch: int = 16
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Requests of recurring 'images': each group is a fixed random point per cut (its class
    drawn at random, so nothing generalises to a new group) plus small perturbations."""
    rng = np.random.default_rng(seed)
    world = np.random.default_rng(7)
    centres = world.normal(size=(len(CUTS), 500, ch * 16))
    classes = world.integers(0, K, 500)
    logits = rng.normal(0, 1, (len(groups), K)).astype(np.float32)
    logits[np.arange(len(groups)), classes[groups]] += 6.0
    noise = rng.normal(size=(len(CUTS), len(groups), ch * 16))
    acts = {
        cut: (centres[i][groups] + 0.1 * noise[i]).astype(np.float16) for i, cut in enumerate(CUTS)
    }
    return acts, logits


def test_familiarity_gate_keeps_new_images_out() -> None:
    """A window of 40 recurring images; the next window adds 10 never seen. The learned
    selector is gated and serves the recurring ones, not the new ones."""
    rng = np.random.default_rng(0)
    window = rng.integers(0, 40, 2000)
    acts, logits = recurring(window, 1)
    cfg = FitConfig(**FAST, variants=("linear", "knn"), selector="logistic", memory_size=2000)
    b = fit_bundle(
        acts,
        logits,
        channels=dict.fromkeys(CUTS, 16),
        cost=COST,
        model_id="toy",
        arch="toy",
        fingerprint="f" * 32,
        lookup_ms=LOOKUP,
        config=cfg,
        groups=window,
    )
    assert b.plan and all(e["selector"]["gate"] is not None for e in b.layers)
    nxt = np.concatenate([rng.integers(0, 40, 900), rng.integers(100, 110, 100)])
    acts2, logits2 = recurring(nxt, 2)
    new = nxt >= 100
    r = evaluate_bundle(b, acts2, logits2, cost=COST, seen=~new)
    assert r.seen.seen.hit_rate > 0.5  # (images held out of training do not hit)
    assert r.seen.unseen.hit_rate == 0.0
    assert r.cascade.agreement >= 0.99
