"""The live memory end to end: a real inference service tells a real cache service the base
labels of its misses, and a perturbed recurrence is answered from memory (real gRPC, real
Redis, both services in-process, the relay as its own process)."""

from __future__ import annotations

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
from tests.cache.helpers import with_live
from tests.inference.helpers import infer_request, inference_stub, output
from tests.integration.inprocess import MODEL, in_process_stack

LAYER = "layer1.1"  # 16 channels; the probe there never hits (threshold 1): memory alone does
DEADLINE_S = 30.0


@pytest.fixture
def stack(redis_url: str, resnet20_weights: Path) -> Iterator:
    with in_process_stack(
        redis_url, resnet20_weights, shadow_fraction=0.0, exact_cache_entries=0
    ) as parts:
        yield parts


def perturbed(image: np.ndarray, seed: int) -> np.ndarray:
    """The same picture with a few pixel values nudged: a recurrence, not an exact repeat."""
    rng = np.random.default_rng(seed)
    out = image.astype(np.int16) + rng.integers(-1, 2, size=image.shape)
    return np.clip(out, 0, 255).astype(np.uint8)[None]


def test_a_recurrence_is_answered_from_memory_once_its_first_sighting_is_labelled(
    stack, assets: Path, resnet20_weights: Path
) -> None:
    cache, inference, store = stack
    fingerprint = inference.engine.models[MODEL].model.fingerprint()
    bundle = random_bundle({LAYER: ("linear", 16)}, model_id=MODEL, fingerprint=fingerprint)
    version = store.publish(with_live(bundle, LAYER, k=1, radius=0.02), model=MODEL)
    images = load_npz(assets / "cifar10" / "test.npz")[0][:8]
    with torch.inference_mode():
        base = load_model("resnet20", resnet20_weights)(torch.from_numpy(images)).argmax(1)
    metrics = cache.metrics.registry
    with inference_stub(inference.port) as stub:
        deadline = time.monotonic() + DEADLINE_S
        while not inference.engine.cache.plan(MODEL) or not (
            inference.engine.cache.plan(MODEL).live_labels
        ):
            assert time.monotonic() < deadline, "the plan asking for labels never came"
            time.sleep(0.05)
        first = stub.ModelInfer(infer_request(MODEL, perturbed(images[0], 0)))
        assert first.parameters[names.PARAM_BUNDLE_VERSION].int64_param == version
        assert not first.parameters[names.PARAM_HIT].bool_param  # nothing remembered yet
        while not metrics.get_sample_value("gati_cache_live_labels_total", {"outcome": "filed"}):
            assert time.monotonic() < deadline, "the first sighting's label was never filed"
            time.sleep(0.02)
        hit = None
        for seed in range(1, 60):  # a reply races the model: a hit shows within a few tries
            reply = stub.ModelInfer(infer_request(MODEL, perturbed(images[0], seed)))
            if reply.parameters[names.PARAM_HIT].bool_param:
                hit = reply
                break
        novel = [
            stub.ModelInfer(infer_request(MODEL, images[i : i + 1])).parameters[names.PARAM_HIT]
            for i in range(1, 8)
        ]
    assert hit is not None, "no recurrence was answered from the live memory"
    assert int(output(hit, names.OUTPUT_LABEL)[0]) == int(base[0])
    assert not any(p.bool_param for p in novel)  # other pictures are far from the one remembered
    assert (
        metrics.get_sample_value("gati_cache_live_hits_total", {"model": MODEL, "layer": LAYER})
        >= 1
    )
