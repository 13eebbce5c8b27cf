"""Early exit through a real cache service (real gRPC, real Redis), both built in-process.

Covers per-row exits in a batch, the exact-match layer, hot swaps without failed requests,
refusal of a plan fitted to other weights, and serving on when the cache service dies.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from gati import names
from gati.data import load_npz
from gati.models import load_model
from gati.probes.fitting.synthetic import random_bundle
from gati.probes.serving.reductions import reduce
from gati.probes.serving.runtime import ProbeRuntime
from gati.store import BundleStore
from services.cache.config import CacheConfig
from services.cache.server import CacheServer
from services.cache.server import build as build_cache
from services.inference.config import InferenceConfig
from services.inference.server import InferenceServer
from services.inference.server import build as build_inference
from tests.inference.helpers import infer_request, inference_stub, output
from tests.integration.inprocess import MODEL, in_process_stack

EXITS = (names.OUTPUT_SCORES, names.OUTPUT_LABEL, names.OUTPUT_HIT, names.OUTPUT_EXIT_LAYER)


def bundle_for(fingerprint: str, threshold: float, seed: int = 0, version: int = 1):
    """Random probes on two ResNet-20 cuts; threshold 0 hits always, 1 never."""
    return random_bundle(
        {"layer1.1": ("linear", 16), "layer2.0": ("linear", 32)},
        model_id=MODEL,
        fingerprint=fingerprint,
        threshold=threshold,
        seed=seed,
        version=version,
    )


@pytest.fixture(scope="module")
def images(assets: Path) -> np.ndarray:
    return load_npz(assets / "cifar10" / "test.npz")[0][:32]


@pytest.fixture
def stack(
    redis_url: str, resnet20_weights: Path
) -> Iterator[tuple[CacheServer, InferenceServer, BundleStore]]:
    with in_process_stack(redis_url, resnet20_weights, shadow_fraction=0.0) as parts:
        yield parts


def _fingerprint(inference: InferenceServer) -> str:
    return inference.engine.models[MODEL].model.fingerprint()


def _stat_exits(inference: InferenceServer) -> dict[str, int]:
    return inference.plane.model_statistics(MODEL)["model_stats"][0]["gati.exits"]


def _wait_version(stub, image: np.ndarray, version: int, timeout: float = 10) -> float:
    """Send fresh images (never exact-cache hits) until answers carry bundle `version`."""
    rng = np.random.default_rng()
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        fresh = rng.integers(0, 256, size=(1, *image.shape), dtype=np.uint8)
        reply = stub.ModelInfer(infer_request(MODEL, fresh))
        if reply.parameters[names.PARAM_BUNDLE_VERSION].int64_param == version:
            return time.monotonic() - start
        time.sleep(0.02)
    raise AssertionError(f"bundle v{version} not in use after {timeout}s")


def test_rows_exit_independently_with_the_probes_answer(stack, images, resnet20_weights) -> None:
    _, inference, store = stack
    bundle = bundle_for(_fingerprint(inference), threshold=0.0)
    version = store.publish(bundle, model=MODEL)
    runtime = ProbeRuntime(bundle)
    model = load_model("resnet20", resnet20_weights)
    with torch.inference_mode():
        base = model(torch.from_numpy(images)).argmax(1).numpy()
        _, acts = model.forward_with_cuts(torch.from_numpy(images), ["layer1.1"])
    x = reduce(acts["layer1.1"], runtime.layers[0][1]).numpy()
    _, probe_labels, _ = runtime.lookup("layer1.1", x, [runtime.new_state() for _ in x])
    with inference_stub(inference.port) as stub:
        _wait_version(stub, images[0], version)
        exits_before = _stat_exits(inference)
        served_exits: dict[str, int] = {}
        seen_hit = False
        for _ in range(20):  # replies race the model; a hit shows within a few tries
            reply = stub.ModelInfer(infer_request(MODEL, images, outputs=EXITS))
            hit = output(reply, names.OUTPUT_HIT)
            exit_index = output(reply, names.OUTPUT_EXIT_LAYER)
            labels = output(reply, names.OUTPUT_LABEL)
            for i in exit_index[hit]:
                layer = model.cut_names[int(i)]
                served_exits[layer] = served_exits.get(layer, 0) + 1
            assert reply.parameters[names.PARAM_BUNDLE_VERSION].int64_param == version
            # a hit row carries its probe's answer and exit; the others the base model's
            cut = {name: i for i, name in enumerate(model.cut_names)}
            assert set(exit_index[hit]) <= {cut["layer1.1"], cut["layer2.0"]}
            first = hit & (exit_index == cut["layer1.1"])
            np.testing.assert_array_equal(labels[first], probe_labels[first])
            np.testing.assert_array_equal(labels[~hit], base[~hit])
            assert (exit_index[~hit] == -1).all()
            if hit.all():
                seen_hit = True
                break
        assert seen_hit, "no request saw every row exit"
        exits_after = _stat_exits(inference)  # ModelStatistics' exits: the rows that exited
        for layer, rows in served_exits.items():
            assert exits_after.get(layer, 0) - exits_before.get(layer, 0) == rows, layer
        off = stub.ModelInfer(infer_request(MODEL, images, caches=False, outputs=EXITS))
        assert not output(off, names.OUTPUT_HIT).any()
        np.testing.assert_array_equal(output(off, names.OUTPUT_LABEL), base)


def test_exact_match_answers_repeats_without_running(stack, images) -> None:
    _, inference, _ = stack
    metrics = inference.metrics.registry
    full = {"model": MODEL, "layer": "full"}
    with inference_stub(inference.port) as stub:
        first = stub.ModelInfer(infer_request(MODEL, images[:3]))
        ran = metrics.get_sample_value("gati_inference_exits_total", full)
        again = stub.ModelInfer(infer_request(MODEL, images[:3]))
        ran_again = metrics.get_sample_value("gati_inference_exits_total", full)
        plain = stub.ModelInfer(infer_request(MODEL, images[:3], caches=False))
    assert not first.parameters[names.PARAM_EXACT_HIT].bool_param
    assert again.parameters[names.PARAM_EXACT_HIT].bool_param
    assert ran_again == ran  # nothing ran
    assert not plain.parameters[names.PARAM_EXACT_HIT].bool_param  # caches=false: the model
    assert metrics.get_sample_value("gati_inference_exits_total", full) == ran + 3
    np.testing.assert_array_equal(
        output(first, names.OUTPUT_SCORES), output(again, names.OUTPUT_SCORES)
    )
    assert metrics.get_sample_value("gati_exact_cache_hits_total", {"model": MODEL}) == 3


def test_exact_match_never_stores_a_learned_cache_answer(stack, images) -> None:
    _, inference, store = stack
    version = store.publish(bundle_for(_fingerprint(inference), 0.0), model=MODEL)
    with inference_stub(inference.port) as stub:
        _wait_version(stub, images[0], version)
        for i in range(1, 11):
            reply = stub.ModelInfer(infer_request(MODEL, images[i : i + 1]))
            repeat = stub.ModelInfer(infer_request(MODEL, images[i : i + 1]))
            if reply.parameters[names.PARAM_HIT].bool_param:
                assert not repeat.parameters[names.PARAM_EXACT_HIT].bool_param


def test_plan_fitted_to_other_weights_is_refused(stack, images) -> None:
    _, inference, store = stack
    store.publish(bundle_for("0" * 32, 0.0), model=MODEL)
    registry = inference.metrics.registry
    deadline = time.monotonic() + 10
    refused = 0.0
    while time.monotonic() < deadline and not refused:
        refused = (
            registry.get_sample_value(
                "gati_cache_plans_refused_total", {"model": MODEL, "reason": "fingerprint"}
            )
            or 0.0
        )
        time.sleep(0.05)
    assert refused >= 1
    with inference_stub(inference.port) as stub:
        for _ in range(5):
            reply = stub.ModelInfer(infer_request(MODEL, images[:4]))
            assert not reply.parameters[names.PARAM_HIT].bool_param
            assert reply.parameters[names.PARAM_BUNDLE_VERSION].int64_param == 0


def test_hot_swap_under_load_fails_nothing(stack, images) -> None:
    _, inference, store = stack
    fp = _fingerprint(inference)
    v1 = store.publish(bundle_for(fp, 0.0, seed=1), model=MODEL)
    failures, versions, stop = [], set(), threading.Event()

    def client() -> None:
        with inference_stub(inference.port) as stub:
            i = 0
            while not stop.is_set():
                try:
                    reply = stub.ModelInfer(infer_request(MODEL, images[i % 32][None]))
                    versions.add(reply.parameters[names.PARAM_BUNDLE_VERSION].int64_param)
                except Exception as exc:
                    failures.append(exc)
                i += 1

    with inference_stub(inference.port) as stub:
        _wait_version(stub, images[0], v1)
        threads = [threading.Thread(target=client) for _ in range(2)]
        for t in threads:
            t.start()
        time.sleep(0.3)
        v2 = store.publish(bundle_for(fp, 0.0, seed=2), model=MODEL)
        delay = _wait_version(stub, images[1], v2)
        time.sleep(0.3)
        stop.set()
        for t in threads:
            t.join()
    print(f"\nbundle v{v2} in use {delay * 1000:.0f} ms after publish")
    assert failures == []
    assert v2 in versions


def test_cache_service_down_means_full_model_then_hits_return(
    redis_url: str, resnet20_weights: Path, images: np.ndarray
) -> None:
    store = BundleStore(redis_url)
    cache = build_cache(
        CacheConfig(
            host="127.0.0.1", port=0, metrics_port=-1, redis_url=redis_url, refresh_seconds=0.2
        )
    )
    port = cache.port
    inference = build_inference(
        InferenceConfig(
            host="127.0.0.1",
            port=0,
            metrics_port=-1,
            http_port=-1,
            model=MODEL,
            arch="resnet20",
            weights=str(resnet20_weights),
            cache_address=f"127.0.0.1:{port}",
            plan_refresh_seconds=0.2,
            exact_cache_entries=0,
        )
    )
    try:
        version = store.publish(bundle_for(_fingerprint(inference), 0.0), model=MODEL)
        with inference_stub(inference.port) as stub:
            _wait_version(stub, images[0], version)
            cache.stop()
            served = [stub.ModelInfer(infer_request(MODEL, images[i : i + 1])) for i in range(20)]
            assert all(output(r, names.OUTPUT_LABEL).shape == (1,) for r in served)
            assert not served[-1].parameters[names.PARAM_HIT].bool_param
            assert (
                inference.metrics.registry.get_sample_value(
                    "gati_cache_unavailable_total", {"model": MODEL}
                )
                > 0
            )
            cache = build_cache(
                CacheConfig(
                    host="127.0.0.1",
                    port=port,
                    metrics_port=-1,
                    redis_url=redis_url,
                    refresh_seconds=0.2,
                )
            )
            _wait_version(stub, images[0], version, timeout=15)
            hits = [
                stub.ModelInfer(infer_request(MODEL, images[i : i + 1]))
                .parameters[names.PARAM_HIT]
                .bool_param
                for i in range(20)
            ]
            assert any(hits)
    finally:
        inference.stop()
        cache.stop()
        store.close()
