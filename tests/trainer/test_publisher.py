"""The trainer's Redis side against a real Redis that goes away and comes back."""

from __future__ import annotations

from pathlib import Path

from gati.probes.fitting.synthetic import random_bundle
from gati.store import BundleStore
from launch.ports import free_port
from launch.processes import start_redis
from services.trainer.metrics import TrainerMetrics
from services.trainer.publisher import Publisher

FP = "f" * 32


def test_publisher_rides_out_a_redis_outage(tmp_path: Path) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    server = start_redis(port, tmp_path / "a")
    metrics = TrainerMetrics()
    pub = Publisher(BundleStore(url), "m", FP, metrics)
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
    pub = Publisher(BundleStore(redis_url), "m", FP, TrainerMetrics())
    try:
        assert pub.current() is None  # fitted to other weights: neither warm start nor rival
        assert pub.current_version == 1
    finally:
        pub.close()
        store.close()
