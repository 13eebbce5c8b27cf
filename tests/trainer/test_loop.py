"""The trainer loop end to end on real records, a real broker and real Redis.

- bootstrap: a served model with no bundle records every request (all misses, all labelled);
  the loop consumes them from Kafka, fits, and publishes version 1, whose probes then hit on
  the traffic that follows while agreeing with the base model;
- publish only if better: a candidate that cannot beat the bundle in Redis on held-out
  records is not published; the pointer stays where it was.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from gati import records
from gati.models import StagedModel, load_model
from gati.probes.fitting.collect import collect
from gati.probes.fitting.costs import CostModel, measure_stage_ms
from gati.probes.fitting.evaluate import evaluate_bundle
from gati.probes.fitting.fit import fit_bundle
from gati.probes.fitting.groups import neighbourhood_groups
from gati.probes.serving.bundle import Bundle
from gati.store import BundleStore
from gati.workloads import make_stream
from services.inference.config import InferenceConfig
from services.inference.engine import Engine
from services.inference.metrics import InferenceMetrics
from services.inference.recorder import Recorder
from services.inference.served import ServedModel
from services.trainer.config import TrainerConfig
from services.trainer.metrics import TrainerMetrics
from services.trainer.server import build_loop

N = 2400  # requests in the stream: 1800 to learn from, 600 to check the published bundle on
FAST = {"variants": ("linear", "mlp"), "epochs": 20, "margin": 0.005}


@pytest.fixture(scope="module")
def model(resnet20_weights: Path) -> StagedModel:
    torch.set_num_threads(1)
    return load_model("resnet20", resnet20_weights)


@pytest.fixture(scope="module")
def stream(assets: Path):
    data = np.load(assets / "cifar10" / "test.npz")
    return make_stream("instance-locality", data["x"], data["y"], N, seed=3)


@pytest.fixture(scope="module")
def activations(model: StagedModel, stream) -> tuple[dict[str, np.ndarray], np.ndarray]:
    return collect(model, stream.images)  # ({cut: [N, C*16] float16}, logits [N, 10])


def _records(acts: dict[str, np.ndarray], logits: np.ndarray, rows: range) -> list[bytes]:
    out = []
    for i in rows:
        rec = records.Record(
            "m",
            f"req-{i}",
            0,
            1000.0 + i * 0.01,
            {c: records.to_wire(a[i], a.shape[1] // 16) for c, a in acts.items()},
            base_label=int(logits[i].argmax()),
            base_scores=logits[i],
        )
        out.append(records.encode(rec))
    return out


# ResNet-20 runs ~3x faster than ResNet-56, whose measured lookup costs are the defaults
# (0.6 ms round trip, 0.25 ms per probe of a ~5 ms model): these keep the same proportion,
# so the loop faces the trade-off it faces with ResNet-56, on a model CI can afford.
RTT_MS, SEND_MS = 0.2, 0.08


def remote_cost(model: StagedModel) -> CostModel:
    return CostModel(
        model.cut_names, measure_stage_ms(model), mode="remote", rtt_ms=RTT_MS, send_ms=SEND_MS
    )


def _config(kafka: str, redis_url: str, **kw: object) -> TrainerConfig:
    base = {
        "model": "m",
        "arch": "resnet20",
        "kafka_bootstrap": kafka,
        "records_topic": f"acts-{uuid.uuid4().hex[:8]}",
        "group_id": f"trainer-{uuid.uuid4().hex[:8]}",
        "redis_url": redis_url,
        "window_records": 4000,
        "min_records": 1500,
        "retrain_every": 10_000,
        "retrain_seconds": 3600.0,
        "rtt_ms": RTT_MS,
        "send_ms": SEND_MS,
        **FAST,
    }
    return TrainerConfig(**{**base, **kw})


def test_bootstrap_from_no_bundle_through_kafka_publishes_probes_that_hit(
    model: StagedModel, stream, activations, kafka_bootstrap: str, redis_url: str
) -> None:
    # ResNet-20 on 1800 instance-locality records: errors come in groups (one image recurs
    # ~10 times), so 450 held-out records measure agreement only to about +-2 points (0.960 to
    # 0.985 seen for the same stream). The target here is 0.95, the bar the evaluation below
    # holds the bundle to; what is tested is that the loop publishes probes by itself (the
    # 0.99 loop is tested with ResNet-56 in tests/integration/test_online_loop.py).
    config = _config(
        kafka_bootstrap,
        redis_url,
        min_records=1600,
        retrain_every=1600,
        agreement_target=0.95,
        margin=0.03,  # calibrate at 0.98: calibration at exactly the target lands below it
    )
    # The inference side: the engine records every request it serves (no caches: all misses).
    imetrics = InferenceMetrics()
    recorder = Recorder(
        InferenceConfig(
            model="m",
            arch="resnet20",
            kafka_bootstrap=kafka_bootstrap,
            records_topic=config.records_topic,
        ),
        imetrics,
    )
    engine = Engine({"m": ServedModel("m", model)}, imetrics, recorder=recorder)
    for i in range(1800):
        engine.infer("m", stream.images[i : i + 1], request_id=f"req-{i}")
    assert recorder.flush(60)
    recorder.close()
    assert imetrics.registry.get_sample_value("gati_records_sent_total") == 1800

    metrics = TrainerMetrics()
    loop = build_loop(config, model, metrics)
    try:
        deadline = time.monotonic() + 240
        while not loop.rounds and time.monotonic() < deadline:
            loop.step()
        assert loop.rounds, "no round ran"
        result = loop.rounds[-1]
        assert result.publish, result.reason
    finally:
        loop.source.close()
        loop.publisher.close()
    got = metrics.registry.get_sample_value
    assert got("gati_trainer_records_consumed_total", {"outcome": "labelled"}) == 1800
    assert got("gati_trainer_versions_published_total") == 1
    assert got("gati_trainer_window_records") == 1800
    assert got("gati_trainer_training_seconds_count") == 1

    store = BundleStore(redis_url)
    version, data = store.current("m")
    store.close()
    assert version == 1
    bundle = Bundle.from_bytes(data, expected_fingerprint=model.fingerprint())
    assert bundle.layers and not bundle.candidates
    acts, logits = activations
    later = slice(1800, N)  # traffic after the window: the working set recurs, some new images
    cost = remote_cost(model)
    report = evaluate_bundle(
        bundle, {c: a[later] for c, a in acts.items()}, logits[later], cost=cost
    )
    cascade = report.cascade
    print(
        f"bootstrap bundle on the next 600 requests: plan {bundle.plan}, hit rate "
        f"{cascade.hit_rate:.3f}, agreement {cascade.agreement:.4f}, "
        f"speedup {cascade.speedup_expected:.2f}x; round {result.seconds:.1f}s"
    )
    assert cascade.hit_rate >= 0.2
    assert cascade.agreement >= 0.95


def test_a_candidate_that_is_not_better_is_not_published(
    model: StagedModel, activations, kafka_bootstrap: str, redis_url: str
) -> None:
    acts, logits = activations
    # The bundle in Redis: fitted on earlier traffic, every cut available.
    cfg = _config(kafka_bootstrap, redis_url)
    fitted = slice(0, 1600)
    a = {c: x[fitted].astype(np.float32) for c, x in acts.items()}
    channels = {c: x.shape[1] // 16 for c, x in acts.items()}
    current = fit_bundle(
        a,
        logits[fitted],
        channels=channels,
        cost=remote_cost(model),
        model_id="m",
        arch="resnet20",
        fingerprint=model.fingerprint(),
        groups=neighbourhood_groups(a, channels, model.cut_names),
        config=cfg.fit_config(),
    )
    assert current.layers, "the reference bundle found no probe worth having"
    store = BundleStore(redis_url)
    assert store.publish(current, "m") == 1

    # The candidate may only use the last cut: however well it agrees, it saves nothing.
    # A loose target makes sure the current bundle passes it, so the comparison is on speed.
    worse = replace(cfg, layers=("layer3.2",), variants=("linear",), agreement_target=0.95)
    metrics = TrainerMetrics()
    loop = build_loop(worse, model, metrics)
    try:
        loop.absorb(_records(acts, logits, range(800, N)))
        assert len(loop.window) == N - 800
        result = loop.retrain()
    finally:
        loop.source.close()
        loop.publisher.close()
    assert result is not None and not result.publish
    assert "does not beat" in result.reason, result.reason
    assert result.current_eval is not None and result.current_eval.meets(0.95)
    assert result.candidate_eval.speedup < result.current_eval.speedup
    assert store.pointer("m") == 1 and store.versions("m") == [1]
    got = metrics.registry.get_sample_value
    assert got("gati_trainer_rounds_total", {"outcome": "rejected"}) == 1
    assert (got("gati_trainer_versions_published_total") or 0) == 0
    assert got("gati_trainer_heldout_speedup", {"bundle": "current"}) == pytest.approx(
        result.current_eval.speedup
    )
    store.close()


def test_a_record_dated_in_the_future_does_not_empty_the_window(
    model: StagedModel, activations, kafka_bootstrap: str, redis_url: str
) -> None:
    """Issue 14, finding 3: one record with time 4.0e9 (year 2096) moved the window's newest
    time, and every other record fell out of it (188 -> 1)."""
    acts, logits = activations
    metrics = TrainerMetrics()
    loop = build_loop(_config(kafka_bootstrap, redis_url), model, metrics)
    try:
        loop.absorb(_records(acts, logits, range(0, 200)))
        assert len(loop.window) == 200
        future = records.decode(_records(acts, logits, range(200, 201))[0])
        for when in (4.0e9, float("inf")):
            loop.absorb([records.encode(replace(future, time=when))])
        loop.absorb(_records(acts, logits, range(201, 210)))
        assert len(loop.window) == 209
        consumed = metrics.registry.get_sample_value(
            "gati_trainer_records_consumed_total", {"outcome": "future"}
        )
        assert consumed == 2
    finally:
        loop.source.close()
