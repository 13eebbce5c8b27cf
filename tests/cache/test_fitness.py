"""Bundle fitness: intact (checksum resealed) but unfit bundles are refused before install."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np
import pytest

from gati.api import cache_pb2, cache_pb2_grpc
from gati.probes.fitting.costs import CostModel
from gati.probes.fitting.fit import FitConfig, fit_bundle
from gati.probes.fitting.synthetic import random_bundle
from gati.probes.serving.bundle import Bundle
from gati.probes.serving.fitness import FitnessError, bundle_problems, fit_to_serve
from gati.store import BundleStore
from services.cache.refresher import load_runtime, refusal_reason
from tests.cache.helpers import (
    FINGERPRINT,
    MODEL,
    Stream,
    lookup_request,
    make_bundle,
    sample,
    wait_until,
    write_raw,
)


def reseal(
    bundle: Bundle,
    manifest: Callable[[dict[str, Any]], None] | None = None,
    tensors: Callable[[dict[str, np.ndarray]], None] | None = None,
) -> Bundle:
    """What a buggy publisher or a hand edit produces: changed content, valid checksum."""
    m = copy.deepcopy(bundle.manifest)
    t = {k: v.copy() for k, v in bundle.tensors.items()}
    if manifest is not None:
        manifest(m)
    if tensors is not None:
        tensors(t)
    return Bundle._sealed(m, t)


def unfit(bundle: Bundle) -> str:
    """The refusal's message for bytes that verify (checksum and all) but are unfit."""
    data = bundle.to_bytes()
    Bundle.from_bytes(data)  # intact: only fitness can refuse it
    with pytest.raises(FitnessError) as info:
        load_runtime(data, bundle.version)
    assert refusal_reason(info.value) == "fitness"
    return str(info.value)


def set_threshold(value: float, layer: int = 0) -> Callable[[dict[str, Any]], None]:
    def edit(m: dict[str, Any]) -> None:
        m["layers"][layer]["threshold"] = value

    return edit


def poison(name: str, value: float) -> Callable[[dict[str, np.ndarray]], None]:
    def edit(t: dict[str, np.ndarray]) -> None:
        t[name].reshape(-1)[0] = value

    return edit


# ---- what passes --------------------------------------------------------------------------
def test_good_bundles_are_fit() -> None:
    knn = random_bundle({"layer2.0": ("knn", 32)}, selector="logistic")
    for bundle in (make_bundle(), knn, random_bundle({})):
        runtime = fit_to_serve(Bundle.from_bytes(bundle.to_bytes()))
        assert runtime.layers == bundle.plan


def test_a_fitted_bundle_records_its_cuts_and_is_fit() -> None:
    """A real fit (a toy model, arch unknown to the cache service): the manifest records
    every cut with its channels, and that description is what probe widths are held to."""
    cuts, c, k, n = ("a", "b"), 4, 3, 900
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(n, k)).astype(np.float32)
    proto = rng.normal(size=(len(cuts), k, c * 16))
    acts = {
        cut: (2.0 * proto[i][logits.argmax(1)] + rng.normal(size=(n, c * 16))).astype(np.float32)
        for i, cut in enumerate(cuts)
    }
    config = FitConfig(epochs=3, warm_epochs=0, variants=("linear",))
    bundle = fit_bundle(
        acts,
        logits,
        channels=dict.fromkeys(cuts, c),
        cost=CostModel(cuts, (1.0, 1.0, 1.0)),
        model_id="toy",
        arch="toy",
        fingerprint=FINGERPRINT,
        lookup_ms={f"{cut}:linear": 0.01 for cut in cuts},
        config=config,
    )
    assert bundle.manifest["cuts"] == [{"name": "a", "channels": 4}, {"name": "b", "channels": 4}]
    assert list(bundle_problems(bundle)) == []

    def wider(m: dict[str, Any]) -> None:
        m["cuts"][0]["channels"] = 8

    assert "probe reads 4 channels, the cut has 8" in " ".join(
        bundle_problems(reseal(bundle, wider))
    )


# ---- what is refused ----------------------------------------------------------------------
@pytest.mark.parametrize("value", [-0.5, 1.5, None, "0.5"])
def test_a_threshold_outside_0_1_is_unfit(value) -> None:
    text = unfit(reseal(make_bundle(), set_threshold(value)))
    assert "layer 'layer1.2' (linear): threshold must be a finite number in [0, 1]" in text
    assert repr(value) in text


def test_a_probe_sized_for_another_channel_count_is_unfit() -> None:
    """Internally consistent (32 channels, 32 inputs, weights to match), so the runtime builds;
    but resnet20's layer1.2 has 16 channels: every lookup would fail on shape."""
    wide = random_bundle({"layer1.2": ("linear", 32)}, model_id=MODEL, fingerprint=FINGERPRINT)
    assert "layer 'layer1.2' (linear): probe reads 32 channels, the cut has 16" in unfit(wide)


def test_an_input_width_that_does_not_fit_the_reduction_is_unfit() -> None:
    def narrower(m: dict[str, Any]) -> None:
        m["layers"][1]["input_dim"] = 100

    text = unfit(reseal(make_bundle(), narrower))
    assert "input_dim 100 does not fit 32 channels x 2^2 (pool2) = 128" in text


def test_a_layer_the_model_does_not_have_is_unfit() -> None:
    b = random_bundle({"layer4.0": ("linear", 64)}, model_id=MODEL)
    assert "the model has no cut 'layer4.0'" in unfit(b)


def test_a_plan_out_of_stage_order_is_unfit() -> None:
    b = random_bundle({"layer2.1": ("linear", 32), "layer1.2": ("linear", 16)})
    assert "not in stage order" in unfit(b)


def test_recorded_cuts_are_held_to_a_builtin_architecture() -> None:
    def lie(m: dict[str, Any]) -> None:
        m["cuts"] = [{"name": "layer1.2", "channels": 32}, {"name": "layer9.9", "channels": 8}]

    text = unfit(reseal(make_bundle(), lie))
    assert "'layer1.2' of resnet20 has 16 channels, manifest says 32" in text
    assert "'layer9.9' is not a cut of resnet20" in text


def test_an_unknown_architecture_is_held_to_its_recorded_cuts_only() -> None:
    b = random_bundle({"x": ("linear", 5)}, arch="pkg.mod:factory")
    assert list(bundle_problems(b)) == []  # nothing describes the model: entry checks only

    def described(m: dict[str, Any]) -> None:
        m["cuts"] = [{"name": "x", "channels": 6}]

    assert "probe reads 5 channels, the cut has 6" in unfit(reseal(b, described))


@pytest.mark.parametrize(
    ("tensor", "value"),
    [
        ("layers/layer2.1/w1", np.nan),
        ("layers/layer3.0/wc", np.inf),
        ("layers/layer1.2/sel_w", -np.inf),
    ],
)
def test_a_nan_or_inf_weight_is_unfit(tensor: str, value: float) -> None:
    text = unfit(reseal(make_bundle(), tensors=poison(tensor, value)))
    assert f"tensor {tensor!r} holds 1 NaN or inf values" in text


def test_an_inf_in_float16_memory_keys_is_unfit() -> None:
    b = make_bundle()
    assert b.tensors["layers/layer1.2/mem_keys"].dtype == np.float16
    assert "mem_keys' holds 1 NaN or inf" in unfit(
        reseal(b, tensors=poison("layers/layer1.2/mem_keys", np.inf))
    )


def test_out_of_range_labels_and_calibration_values_are_unfit() -> None:
    def edit(m: dict[str, Any]) -> None:
        m["agreement_target"] = 1.2
        m["fit"] = {"calibration": {"hit_rate": -0.1, "thresholds": [0.5, 2.0], "lam": -1}}
        m["layers"][0]["hit_rate_calibration"] = 3
        m["layers"][0]["lookup_cost_ms"] = -1.0
        m["layers"][0]["calibration_size"] = -3
        m["layers"][0]["selector"]["gate"] = "wide"  # JSON has no inf: a seal refuses one

    def labels(t: dict[str, np.ndarray]) -> None:
        t["layers/layer2.1/mem_labels"][0] = 10  # num_classes is 10: labels are 0..9

    text = unfit(reseal(make_bundle(), edit, labels))
    for words in (
        "agreement_target must be in [0, 1], got 1.2",
        "fit calibration hit_rate must be in [0, 1], got -0.1",
        "fit calibration thresholds must all be in [0, 1]",
        "fit calibration lam must be a finite number >= 0",
        "hit_rate_calibration must be in [0, 1], got 3",
        "lookup_cost_ms must be a finite number >= 0, got -1.0",
        "calibration_size must be an int >= 0, got -3",
        "selector gate must be a finite number, got 'wide'",
    ):
        assert words in text
    assert "(and 1 more)" in text  # eight shown; the labels problem is counted


def test_a_knn_probe_must_vote_over_the_bundles_classes() -> None:
    b = random_bundle({"layer2.0": ("knn", 32)})

    def meta(t: dict[str, np.ndarray]) -> None:
        t["layers/layer2.0/knn_meta"][1] = 7

    assert "knn_meta' must be [k >= 1, 10], got [5, 7]" in unfit(reseal(b, tensors=meta))


def test_a_probe_answering_another_class_count_is_unfit() -> None:
    """Only the built runtime shows it: the linear probe's bias has 10 entries."""
    b = random_bundle({"layer1.2": ("linear", 16)})

    def twelve(m: dict[str, Any]) -> None:
        m["num_classes"] = 12

    assert "probe answers 10 classes, bundle says 12" in unfit(reseal(b, twelve))


# ---- through a real Redis -----------------------------------------------------------------
def test_publish_refuses_an_unfit_bundle_and_writes_nothing(store: BundleStore) -> None:
    """The operator hears it at `gati probes publish`, not from a cache log later."""
    with pytest.raises(FitnessError, match="threshold must be a finite number"):
        store.publish(reseal(make_bundle(seed=2), set_threshold(-0.5)))
    assert store.client.keys("*") == []
    assert store.publish(make_bundle(seed=3)) == 1


def test_unfit_bundles_in_redis_are_refused_and_the_last_good_stays(
    store: BundleStore, start_cache, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="services.cache.refresher")
    store.publish(make_bundle(seed=1))
    server = start_cache(refresh_seconds=30.0)  # what lands within seconds came by pub/sub
    wide = random_bundle({"layer1.2": ("linear", 32)}, model_id=MODEL, fingerprint=FINGERPRINT)
    cases = [
        (reseal(make_bundle(seed=2), set_threshold(-0.5)), "threshold must be a finite number"),
        (wide, "probe reads 32 channels, the cut has 16"),
        (reseal(make_bundle(seed=4), tensors=poison("layers/layer2.1/w1", np.nan)), "NaN or inf"),
    ]
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    stub = cache_pb2_grpc.CacheServiceStub(channel)

    def plan_version() -> int:
        return stub.GetPlan(cache_pb2.PlanRequest(model=MODEL), timeout=5).bundle_version

    def fitness_refusals() -> float:
        labels = {"model": MODEL, "reason": "fitness"}
        return sample(server.metrics, "gati_cache_bundles_refused_total", **labels)

    try:
        for i, (bundle, words) in enumerate(cases, start=1):
            version = 1 + i
            write_raw(store, version, bundle.with_version(version).to_bytes())
            wait_until(lambda i=i: fitness_refusals() == i, timeout=20.0)
            assert plan_version() == 1 and server.probes.version(MODEL) == 1
            logged = [r.getMessage() for r in caplog.records]
            assert any(f"refused bundle v{version} " in m and words in m for m in logged), logged
        for reason in ("checksum", "format", "probes"):  # refused for fitness, nothing else
            labels = {"model": MODEL, "reason": reason}
            assert sample(server.metrics, "gati_cache_bundles_refused_total", **labels) == 0
        server.refresher.sync_once()  # the pointer stays on the unfit v4: not refused again
        assert fitness_refusals() == 3
        good = store.publish(make_bundle(seed=5))
        assert good == 5
        wait_until(lambda: plan_version() == good, timeout=20.0)
        stream = Stream(channel)
        reply = stream.ask(lookup_request(1, "layer1.2", np.ones((1, 16), np.float32)))
        stream.close()
        assert reply.error == "" and reply.bundle_version == good
    finally:
        channel.close()
