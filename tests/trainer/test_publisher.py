"""The trainer's Redis side against a real Redis that goes away and comes back."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gati.probes.fitting.entries import active_prefix, candidate_prefix, layer_entry
from gati.probes.fitting.synthetic import random_bundle, random_roles
from gati.probes.serving.bundle import Bundle
from gati.store import BundleStore
from launch.ports import free_port
from launch.processes import start_redis
from services.trainer.learner import strip_candidates
from services.trainer.metrics import TrainerMetrics
from services.trainer.publisher import Publisher

FP = "f" * 32


def test_publisher_rides_out_a_redis_outage(tmp_path: Path) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    server = start_redis(port, tmp_path / "a")
    metrics = TrainerMetrics()
    pub = Publisher(url, None, "m", FP, metrics)
    try:
        assert pub.current() is None and pub.current_version is None
        b1 = random_bundle({"layer1.0": ("linear", 16)}, model_id="m", fingerprint=FP)
        assert pub.publish(b1) == 1
        assert pub.current().version == 1  # type: ignore[union-attr]

        server.stop()  # Redis gone: the last bundle read stands in, publishing fails softly
        assert pub.current().version == 1  # type: ignore[union-attr]
        assert pub.publish(b1) is None
        assert not pub.reachable
        assert metrics.registry.get_sample_value("gati_trainer_redis_errors_total") == 2

        server = start_redis(port, tmp_path / "b")  # back, empty (nothing was saved)
        assert pub.current() is None  # what Redis says now wins
        assert pub.publish(b1) == 1 and pub.reachable
        assert metrics.registry.get_sample_value("gati_trainer_versions_published_total") == 2
    finally:
        pub.close()
        server.stop()


def test_bundles_for_another_model_build_are_ignored(redis_url: str) -> None:
    store = BundleStore(redis_url)
    store.publish(random_bundle({"layer1.0": ("linear", 16)}, model_id="m", fingerprint="0" * 32))
    pub = Publisher(redis_url, None, "m", FP, TrainerMetrics())
    try:
        assert pub.current() is None  # fitted to other weights: neither warm start nor rival
        assert pub.current_version == 1
    finally:
        pub.close()
        store.close()


def test_strip_candidates_leaves_a_valid_bundle_with_the_same_plan() -> None:
    rng = np.random.default_rng(0)
    e1, t1 = layer_entry(
        "layer1.0", "linear", 16, random_roles("linear", 16, 10, rng),
        prefix=active_prefix("layer1.0"), threshold=0.5,
    )  # fmt: skip
    e2, t2 = layer_entry(
        "layer1.1", "mlp", 16, random_roles("mlp", 16, 10, rng),
        prefix=candidate_prefix("layer1.1", "mlp"),
    )  # fmt: skip
    b = Bundle.create(
        model_id="m", arch="resnet20", model_fingerprint=FP, layers=[e1],
        tensors={**t1, **t2}, candidates=[e2], version=3,
    )  # fmt: skip
    s = strip_candidates(b)
    assert s.candidates == [] and set(s.tensors) == set(t1)
    assert s.version == 3 and s.plan == b.plan == [("layer1.0", "pool1")]
    assert Bundle.from_bytes(s.to_bytes(), expected_fingerprint=FP).checksum == s.checksum
    assert strip_candidates(s) is s  # nothing left to strip
