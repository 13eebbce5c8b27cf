"""Signed records: the inference service signs each activation record, the trainer drops and
counts ("forged") the ones that fail, before decoding them, and never lets them into its window.

Everything runs for real: a Tansu broker, records produced with kafka-python exactly as anyone
who can write to the topic could (a forger's secret under the right key id, no headers at all,
a valid signature of another record), the inference service's `Recorder` behind an `Engine`,
and the trainer loop `build_loop` wires from a `TrainerConfig`, stepped until it has read
everything.
"""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from kafka import KafkaProducer

from gati import records
from gati.models import StagedModel, load_model
from gati.signing import Keyring
from services.inference.config import InferenceConfig
from services.inference.engine import Engine
from services.inference.metrics import InferenceMetrics
from services.inference.recorder import Recorder
from services.inference.served import ServedModel
from services.trainer.config import TrainerConfig
from services.trainer.loop import FORGED, TrainerLoop
from services.trainer.metrics import TrainerMetrics
from services.trainer.server import build_loop

DEADLINE_S = 180.0  # generous: two shared cores under load
Headers = list[tuple[str, bytes]] | None


@pytest.fixture(scope="module")
def model(resnet20_weights: Path) -> StagedModel:
    torch.set_num_threads(1)
    return load_model("resnet20", resnet20_weights)


def _good(model: StagedModel, i: int, t: float) -> bytes:
    """A record of the shapes ResNet-20 produces, labelled (plausible in every way)."""
    rng = np.random.default_rng(i)
    acts = {
        cut: records.to_wire(rng.standard_normal(s[0] * 16).astype(np.float32), s[0])
        for cut, s in model.cut_shapes().items()
    }
    scores = rng.standard_normal(10).astype(np.float32)
    label = int(scores.argmax())
    rec = records.Record(
        "m", f"req-{i}", 0, t, acts, served_label=label, base_label=label, base_scores=scores
    )
    return records.encode(rec)


def _produce(bootstrap: str, topic: str, messages: list[tuple[bytes, Headers]]) -> None:
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks=1, enable_idempotence=False, bootstrap_timeout_ms=5000
    )
    for value, headers in messages:
        producer.send(topic, key=b"m", value=value, headers=headers)
    producer.flush(30)
    producer.close()


def _config(kafka: str, redis_url: str, topic: str, keys: Path | None) -> TrainerConfig:
    return TrainerConfig(
        model="m",
        arch="resnet20",
        kafka_bootstrap=kafka,
        records_topic=topic,
        group_id=f"trainer-{uuid.uuid4().hex[:8]}",
        redis_url=redis_url,
        signing_keys=None if keys is None else str(keys),
    )  # min_records 1500: no round runs on these


def _consumed(metrics: TrainerMetrics, outcome: str) -> float:
    value = metrics.registry.get_sample_value(
        "gati_trainer_records_consumed_total", {"outcome": outcome}
    )
    return value or 0.0


def _read_all(loop: TrainerLoop, metrics: TrainerMetrics, total: int) -> None:
    """Step the loop until it has consumed `total` records (whatever became of them)."""
    outcomes = ("labelled", "unlabelled", "duplicate", "malformed", "other_model", FORGED)
    deadline = time.monotonic() + DEADLINE_S
    while sum(_consumed(metrics, o) for o in outcomes) < total:
        assert time.monotonic() < deadline, "the loop did not read every record in time"
        loop.step()


def _close(loop: TrainerLoop) -> None:
    loop.source.close()
    loop.publisher.close()


def test_forged_records_are_dropped_counted_and_kept_out_of_the_window(
    model: StagedModel,
    kafka_bootstrap: str,
    redis_url: str,
    signing_keys: Path,
    wrong_keys: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ours, forger = Keyring.load(signing_keys), Keyring.load(wrong_keys)
    now = time.time()
    v = [_good(model, i, now - 100 + i) for i in range(6)]
    messages = [
        (v[0], ours.headers(v[0])),
        (v[1], ours.headers(v[1])),
        (v[2], forger.headers(v[2])),  # the right key id, another secret
        (v[3], None),  # no signature at all
        (v[4], ours.headers(v[1])),  # a genuine signature, of another record
        (b"junk", None),  # never decoded: forged, not malformed
        (v[5], ours.headers(v[5])),
    ]
    topic = f"acts-{uuid.uuid4().hex[:8]}"
    _produce(kafka_bootstrap, topic, messages)

    metrics = TrainerMetrics()
    loop = build_loop(_config(kafka_bootstrap, redis_url, topic, signing_keys), model, metrics)
    loop.refusals.interval_s = 3600.0  # however slow the machine, one line per reason
    try:
        with caplog.at_level(logging.WARNING, logger="services.trainer.loop"):
            _read_all(loop, metrics, len(messages))
        assert [r.request_id for r in loop.window.records()] == ["req-0", "req-1", "req-5"]
        assert _consumed(metrics, "labelled") == 3
        assert _consumed(metrics, FORGED) == 4
        assert _consumed(metrics, "malformed") == 0
        assert metrics.registry.get_sample_value("gati_trainer_window_records") == 3
        lines = [r.getMessage() for r in caplog.records if " as forged;" in r.getMessage()]
        assert len(lines) == 1, lines  # noted, at a bounded rate

        # bare values (no headers) handed to `absorb` carry no signature either
        loop.absorb([_good(model, 9, now)])
        assert _consumed(metrics, FORGED) == 5 and len(loop.window) == 3
    finally:
        _close(loop)


def test_the_recorders_signed_records_are_absorbed_and_unsigned_ones_refused(
    model: StagedModel, kafka_bootstrap: str, redis_url: str, signing_keys: Path
) -> None:
    topic = f"acts-{uuid.uuid4().hex[:8]}"
    x = np.random.default_rng(0).integers(0, 256, size=(5, 32, 32, 3), dtype=np.uint8)
    for keys, batch, request_id in ((signing_keys, x[:3], "signed"), (None, x[3:], "unsigned")):
        config = InferenceConfig(
            model="m",
            arch="resnet20",
            kafka_bootstrap=kafka_bootstrap,
            records_topic=topic,
            signing_keys=None if keys is None else str(keys),
        )
        imetrics = InferenceMetrics()
        recorder = Recorder(config, imetrics)
        try:
            engine = Engine({"m": ServedModel("m", model)}, imetrics, recorder=recorder)
            engine.infer("m", batch, request_id=request_id)
            assert recorder.flush(60)
        finally:
            recorder.close()
        assert imetrics.registry.get_sample_value("gati_records_sent_total") == len(batch)

    metrics = TrainerMetrics()
    loop = build_loop(_config(kafka_bootstrap, redis_url, topic, signing_keys), model, metrics)
    try:
        _read_all(loop, metrics, 5)
        assert {(r.request_id, r.row) for r in loop.window.records()} == {
            ("signed", i) for i in range(3)
        }
        assert _consumed(metrics, "labelled") == 3 and _consumed(metrics, FORGED) == 2
    finally:
        _close(loop)

    # signing off (no keys): nothing is checked, signed or not
    metrics = TrainerMetrics()
    loop = build_loop(_config(kafka_bootstrap, redis_url, topic, None), model, metrics)
    try:
        _read_all(loop, metrics, 5)
        assert len(loop.window) == 5
        assert _consumed(metrics, "labelled") == 5 and _consumed(metrics, FORGED) == 0
    finally:
        _close(loop)
