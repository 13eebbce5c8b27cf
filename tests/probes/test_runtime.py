"""ProbeRuntime: lookups answer per row, keep per-row state, and honour thresholds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gati.probes.fitting.synthetic import random_bundle, random_roles
from gati.probes.serving.bundle import Bundle, BundleError
from gati.probes.serving.runtime import ProbeRuntime
from gati.probes.serving.variants import Predictor, import_probe, stacked_module

LAYERS = {"layer1.0": ("linear", 16), "layer2.1": ("mlp", 32), "layer3.2": ("conv", 64)}


@pytest.fixture(scope="module")
def runtime() -> ProbeRuntime:
    b = random_bundle(LAYERS, selector="logistic", memory_size=64, threshold=0.5, version=3)
    return ProbeRuntime(Bundle.from_bytes(b.to_bytes()))


def test_attributes(runtime: ProbeRuntime) -> None:
    assert runtime.model == "resnet20"
    assert runtime.version == 3
    assert runtime.layers == [("layer1.0", "pool1"), ("layer2.1", "pool2"), ("layer3.2", "pool4")]
    assert [runtime.input_dim(layer) for layer in LAYERS] == [16, 128, 1024]
    assert runtime.thresholds == {"layer1.0": 0.5, "layer2.1": 0.5, "layer3.2": 0.5}


@pytest.mark.parametrize("selector", ["logistic", "max-softmax"])
def test_batch_equals_rows_and_states_advance(selector: str) -> None:
    """One row goes through a plain-float path; it must agree with the vectorised one."""
    b = random_bundle(LAYERS, selector=selector, memory_size=64, threshold=0.5, seed=7)
    runtime = ProbeRuntime(b)
    rng = np.random.default_rng(1)
    xs = {layer: rng.random((5, runtime.input_dim(layer)), dtype=np.float32) for layer in LAYERS}
    batch_states = [runtime.new_state() for _ in range(5)]
    row_states = [runtime.new_state() for _ in range(5)]
    for layer in LAYERS:
        hit, label, conf = runtime.lookup(layer, xs[layer], batch_states)
        assert hit.dtype == bool and label.dtype == np.int32 and conf.dtype == np.float32
        assert hit.shape == label.shape == conf.shape == (5,)
        np.testing.assert_array_equal(hit, conf > 0.5)
        for i in range(5):
            h1, l1, c1 = runtime.lookup(layer, xs[layer][i : i + 1], [row_states[i]])
            assert (h1[0], l1[0]) == (hit[i], label[i])
            assert c1[0] == pytest.approx(conf[i], abs=1e-5)
        assert [s.prev_label for s in batch_states] == label.tolist()
    assert all(s.lookups == 3 for s in batch_states)


def test_previous_cut_changes_the_learned_score(runtime: ProbeRuntime) -> None:
    x = np.random.default_rng(2).random((1, 128), dtype=np.float32)
    fresh = runtime.lookup("layer2.1", x, [runtime.new_state()])[2][0]
    state = runtime.new_state()
    state.prev_label, state.prev_conf = int(runtime.lookup("layer2.1", x, [state])[1][0]), 0.9
    agreeing = runtime.lookup("layer2.1", x, [state])[2][0]
    assert agreeing != pytest.approx(fresh)


def test_bad_requests(runtime: ProbeRuntime) -> None:
    with pytest.raises(KeyError, match=r"no active probe at layer 'layer3\.8'"):
        runtime.lookup("layer3.8", np.zeros((1, 64), np.float32), [runtime.new_state()])
    with pytest.raises(ValueError, match=r"expects \[rows, 16\] \(pool1\), got \[1, 17\]"):
        runtime.lookup("layer1.0", np.zeros((1, 17), np.float32), [runtime.new_state()])
    with pytest.raises(ValueError, match="2 rows but 1 states"):
        runtime.lookup("layer1.0", np.zeros((2, 16), np.float32), [runtime.new_state()])


def test_float16_input_accepted(runtime: ProbeRuntime) -> None:
    x = np.random.default_rng(3).random((2, 16)).astype(np.float16)
    hit, _, _ = runtime.lookup("layer1.0", x, [runtime.new_state(), runtime.new_state()])
    assert hit.shape == (2,)


def test_with_thresholds_tightens(runtime: ProbeRuntime) -> None:
    x = np.random.default_rng(4).random((200, 16), dtype=np.float32)
    loose = runtime.with_thresholds({"layer1.0": 0.0})
    closed = runtime.with_thresholds({"layer1.0": 1.0})
    assert loose.lookup("layer1.0", x, [loose.new_state() for _ in x])[0].all()
    assert not closed.lookup("layer1.0", x, [closed.new_state() for _ in x])[0].any()
    assert runtime.thresholds["layer1.0"] == 0.5  # the original is untouched


def test_empty_plan_runtime() -> None:
    rt = ProbeRuntime(random_bundle({}))
    assert rt.layers == [] and rt.thresholds == {}


def test_runtime_refuses_novelty_selector_without_memory() -> None:
    b = random_bundle({"layer1.0": ("linear", 16)}, selector="logistic", memory_size=8)
    entry = dict(b.layers[0], novelty=None)
    entry["tensors"] = {k: v for k, v in entry["tensors"].items() if "/mem_" not in k}
    tensors = {k: v for k, v in b.tensors.items() if "/mem_" not in k}
    broken = Bundle._sealed({**b.manifest, "layers": [entry]}, tensors)
    with pytest.raises(BundleError, match=r"layer 'layer1\.0': selector reads novelty features"):
        ProbeRuntime(broken)


@pytest.mark.parametrize(("variant", "channels"), [("linear", 16), ("mlp", 32), ("conv", 8)])
def test_numpy_predictor_matches_torch_module(variant: str, channels: int) -> None:
    """The lookup path (numpy) computes exactly what was trained (torch)."""
    rng = np.random.default_rng(5)
    roles = random_roles(variant, channels, 10, rng, hidden=32, filters=8)
    roles["in_mu"] = rng.normal(size=roles["in_mu"].shape).astype(np.float32)
    roles["in_scale"] = rng.uniform(0.5, 2, size=roles["in_mu"].shape).astype(np.float32)
    module = stacked_module(variant, 2, channels, 10, hidden=32, filters=8)
    assert import_probe(module, 1, roles)
    x = rng.normal(size=(7, roles["in_mu"].shape[0])).astype(np.float32)
    z = (x - roles["in_mu"]) * roles["in_scale"]
    with torch.no_grad():
        stacked = torch.from_numpy(np.stack([z, z], axis=1))  # [7, 2, D]
        expected = module(stacked)[:, 1].numpy()
    np.testing.assert_allclose(Predictor(variant, channels, roles)(x), expected, atol=1e-4)


def test_familiarity_gate_closes_far_requests_on_both_paths() -> None:
    """A gated selector never serves a request farther from the memory than its gate."""
    b = random_bundle(
        {"layer1.0": ("linear", 16)},
        selector="logistic",
        memory_size=32,
        gate=float(np.log(1.0 + 1e-3)),
        threshold=0.0,
        seed=3,
    )
    rt = ProbeRuntime(Bundle.from_bytes(b.to_bytes()))
    assert rt.bundle.layers[0]["selector"]["gate"] == pytest.approx(np.log(1.001))
    memory = rt.probe("layer1.0").memory
    near = memory.keys[:4] / memory.scale + memory.mu  # exactly remembered rows: distance 0
    far = near + 50.0 / memory.scale  # 50 standard deviations away on every value
    x = np.vstack([near, far]).astype(np.float32)
    hit, _, conf = rt.lookup("layer1.0", x, [rt.new_state() for _ in x])
    assert conf[4:].tolist() == [0.0] * 4 and not hit[4:].any()
    assert (conf[:4] > 0).all()
    for i in range(8):  # the one-row path agrees
        h1, _, c1 = rt.lookup("layer1.0", x[i : i + 1], [rt.new_state()])
        assert h1[0] == hit[i] and c1[0] == pytest.approx(conf[i], abs=1e-5)


def test_knn_probe_votes_with_the_labels_of_its_nearest_requests() -> None:
    b = random_bundle(
        {"layer1.0": ("knn", 16), "layer2.0": ("knn", 32)}, selector="logistic", seed=4
    )
    b = Bundle.from_bytes(b.to_bytes())
    entry = b.layers[0]
    assert b.tensors[entry["prefix"] + "mem_keys"].dtype == np.float16
    assert entry["novelty"] == {"reduction": "pool2", "k": 5, "size": 64}
    assert "nn_agree" in entry["selector"]["features"]  # its memory serves the selector too
    rt = ProbeRuntime(b)
    memory = rt.probe("layer1.0").memory
    x = (memory.keys[:6] / memory.scale + memory.mu).astype(np.float32)  # remembered requests
    logits = rt.probe("layer1.0").predictor(x)
    _, near, nearest = memory.query(x, "pool2")
    np.testing.assert_array_equal(nearest, memory.labels[:6])  # each finds itself first
    for row, labels in zip(logits, near, strict=True):
        counts = np.bincount(labels, minlength=10)
        np.testing.assert_allclose(np.exp(row), counts + 0.1, rtol=1e-5)
    states = [rt.new_state() for _ in x]
    hit, label, conf = rt.lookup("layer1.0", x, states)
    for i in range(6):
        h1, l1, c1 = rt.lookup("layer1.0", x[i : i + 1], [rt.new_state()])
        assert (h1[0], l1[0]) == (hit[i], label[i]) and c1[0] == pytest.approx(conf[i], abs=1e-5)
