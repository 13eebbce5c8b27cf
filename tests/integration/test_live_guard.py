"""The live agreement guard pulls served agreement back when a loose bundle is published.

A bundle whose threshold lets every lookup hit serves random probe answers. Shadow
completions (every hit, here) show the guard that live agreement is far below target, and it
switches the layers off at once, without waiting for a retrain: served answers go back to the
base model's.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from gati import names
from gati.data import load_npz
from gati.models import load_model
from gati.probes.fitting.synthetic import random_bundle
from tests.inference.helpers import infer_request, inference_stub, output
from tests.integration.inprocess import MODEL, in_process_stack


def test_guard_switches_off_a_loose_bundle(
    redis_url: str, resnet20_weights: Path, assets: Path
) -> None:
    x = load_npz(assets / "cifar10" / "test.npz")[0][:300]
    model = load_model("resnet20", resnet20_weights)
    with torch.inference_mode():
        base = model(torch.from_numpy(x)).argmax(1).numpy()
    with in_process_stack(
        redis_url,
        resnet20_weights,
        exact_cache_entries=0,
        shadow_fraction=1.0,
        shadow_inflight=2,
        agreement_target=0.99,
    ) as (_, inference, store):
        loose = random_bundle(
            {"layer1.1": ("linear", 16)},
            model_id=MODEL,
            fingerprint=model.fingerprint(),
            threshold=0.0,
            seed=3,
        )
        version = store.publish(loose, model=MODEL)
        served, hits = [], []
        with inference_stub(inference.port) as stub:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # until the loose plan is live
                reply = stub.ModelInfer(infer_request(MODEL, x[:1]))
                if reply.parameters[names.PARAM_BUNDLE_VERSION].int64_param == version:
                    break
            for i in range(len(x)):
                reply = stub.ModelInfer(infer_request(MODEL, x[i : i + 1]))
                served.append(int(output(reply, names.OUTPUT_LABEL)[0]))
                hits.append(reply.parameters[names.PARAM_HIT].bool_param)
                time.sleep(0.002)  # let shadow completions keep up, as live traffic would
        served_arr, hits_arr = np.array(served), np.array(hits)
        agree = served_arr == base
        first_hits = int(hits_arr[:50].sum())
        late = slice(200, 300)
        registry = inference.metrics.registry
        disabled = registry.get_sample_value("gati_guard_disabled_layers", {"model": MODEL})
        wrong = registry.get_sample_value(
            "gati_live_agreement_total", {"model": MODEL, "layer": "layer1.1", "agree": "false"}
        )
        print(
            f"\nloose bundle: {first_hits}/50 early hits, agreement first 50 "
            f"{agree[:50].mean():.2f}, last 100 {agree[late].mean():.2f}; "
            f"hits in last 100: {int(hits_arr[late].sum())}"
        )
    assert first_hits > 10  # the loose bundle was really serving
    assert agree[:50].mean() < 0.9  # and it was wrong a lot
    assert disabled == 1 and wrong >= 10
    assert hits_arr[late].sum() == 0  # the guard switched the layer off
    assert agree[late].mean() == 1.0  # served answers are the base model's again
