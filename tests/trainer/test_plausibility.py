"""Plausibility of records (issue 14): well-formed records the model could not have produced
(base_label 99 on a 10-class model, C=1 at a 16-channel cut, ...) used to enter the window as
labelled. Now they are refused before it, counted by reason, logged at a bounded rate, and the
loop goes on with the good records after them.

Unit tests of the check, the window's age bound and the refusal log first; then the finding
reproduced end to end: records produced to a real Tansu broker, consumed by the trainer loop.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from kafka import KafkaProducer

from gati import records
from gati.models import StagedModel, load_model
from gati.models.resnet_cifar import build_resnet
from services.trainer.config import TrainerConfig
from services.trainer.metrics import TrainerMetrics
from services.trainer.plausibility import (
    BAD_LABEL,
    BAD_LAYER,
    BAD_REQUEST_ID,
    BAD_SCORES,
    BAD_SHAPE,
    NONFINITE,
    ModelShape,
    RefusalLog,
    check,
)
from services.trainer.server import build_loop
from services.trainer.window import ADDED, STALE, Window

SHAPE = ModelShape(10, {"layer1.0": 16, "layer3.2": 64})


def _rec(i: int = 0, t: float = 1000.0, **kw: object) -> records.Record:
    acts = {
        "layer1.0": records.to_wire(np.full(16 * 16, 0.5, np.float32), 16),
        "layer3.2": records.to_wire(np.full(64 * 16, 0.25, np.float32), 64),
    }
    rec = records.Record(
        "m", f"req-{i}", 0, t, acts, served_label=3, base_label=3, base_scores=np.eye(10)[3]
    )
    return replace(rec, **kw)


def _act(layer: str, a: np.ndarray) -> dict[str, np.ndarray]:
    return {**_rec().activations, layer: a.astype(np.float16)}


def test_a_record_the_model_could_produce_passes() -> None:
    assert check(_rec(), SHAPE) is None
    assert check(_rec(served_label=-1), SHAPE) is None  # the Record default: not stated
    assert check(_rec(base_label=None, base_scores=None, hit=True), SHAPE) is None
    pool1 = _act("layer3.2", np.ones((64, 1, 1)))  # a coarser reduction is still the cut's
    assert check(_rec(activations=pool1), SHAPE) is None


@pytest.mark.parametrize(
    ("change", "reason", "says"),
    [
        ({"request_id": "r" * 257}, BAD_REQUEST_ID, "257 bytes"),
        ({"request_id": "é" * 129}, BAD_REQUEST_ID, "258 bytes"),
        ({"base_label": 99}, BAD_LABEL, "base_label 99"),
        ({"base_label": -1}, BAD_LABEL, "base_label -1"),
        ({"base_label": 10}, BAD_LABEL, "10-class"),
        ({"served_label": 10}, BAD_LABEL, "served_label 10"),
        ({"served_label": -2}, BAD_LABEL, "served_label -2"),
        ({"base_scores": np.zeros(9, np.float32)}, BAD_SCORES, "10 classes"),
        ({"base_scores": np.zeros((1, 10), np.float32)}, BAD_SCORES, "10 classes"),
        ({"base_scores": np.r_[np.zeros(9), np.nan]}, NONFINITE, "base_scores"),
        ({"base_scores": np.r_[np.zeros(9), np.inf]}, NONFINITE, "base_scores"),
        ({"activations": _act("fc", np.ones((16, 4, 4)))}, BAD_LAYER, "'fc'"),
        ({"activations": _act("layer1.0", np.ones((1, 4, 4)))}, BAD_SHAPE, "16 channels"),
        ({"activations": _act("layer3.2", np.ones((16, 4, 4)))}, BAD_SHAPE, "64 channels"),
        ({"activations": _act("layer1.0", np.ones((16, 4, 2)))}, BAD_SHAPE, "(16, 4, 2)"),
        ({"activations": _act("layer1.0", np.ones((16, 3, 3)))}, BAD_SHAPE, "grid 3"),
        ({"activations": _act("layer1.0", np.ones((16, 16)))}, BAD_SHAPE, "(16, 16)"),
        ({"activations": _act("layer1.0", np.full((16, 4, 4), np.nan))}, NONFINITE, "layer1.0"),
        ({"activations": _act("layer3.2", np.full((64, 4, 4), -np.inf))}, NONFINITE, "layer3.2"),
    ],
)
def test_an_implausible_record_is_refused_with_its_reason(change, reason, says) -> None:
    refusal = check(_rec(**change), SHAPE)
    assert refusal is not None and refusal.reason == reason
    assert says in refusal.detail


def test_model_shape_comes_from_the_model() -> None:
    model = build_resnet("resnet20")
    shape = ModelShape.of(model)
    assert shape.classes == 10
    assert list(shape.channels) == list(model.cut_names)
    assert (shape.channels["layer1.0"], shape.channels["layer2.0"]) == (16, 32)
    assert shape.channels["layer3.2"] == 64


def test_window_refuses_records_older_than_its_age_bound() -> None:
    w = Window(max_records=100, max_seconds=600.0)
    assert w.add(_rec(0, t=10_000.0)) == ADDED
    assert w.add(_rec(1, t=10_000.0 - 601)) == STALE  # would sit at the young end
    assert w.add(_rec(2, t=0.0)) == STALE  # an unset time
    assert w.add(_rec(3, t=10_000.0 - 599)) == ADDED  # late, but within the window
    assert [r.request_id for r in w.records()] == ["req-0", "req-3"]
    assert w.stats().newest == 10_000.0


def test_refusal_log_writes_the_first_then_one_line_per_interval(caplog) -> None:
    now = [0.0]
    logger = logging.getLogger("test.refusals")
    limited = RefusalLog(logger, interval_s=60.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="test.refusals"):
        written = [limited.note(BAD_LABEL, f"#{i}") for i in range(1000)]
        assert limited.note(BAD_SHAPE, "other reason")  # reasons are limited separately
        now[0] = 61.0
        assert limited.note(BAD_LABEL, "#1000")
        assert not limited.note(BAD_LABEL, "#1001")
    assert written[0] and not any(written[1:])
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "refused 1 record(s) as bad_label; latest: #0",
        "refused 1 record(s) as bad_shape; latest: other reason",
        "refused 1000 record(s) as bad_label; latest: #1000",  # 999 quiet ones + this one
    ]


def test_a_refusal_line_is_bounded_whatever_the_record_says(caplog) -> None:
    logger = logging.getLogger("test.refusals.long")
    with caplog.at_level(logging.WARNING, logger="test.refusals.long"):
        RefusalLog(logger).note(BAD_LABEL, "x" * 1_000_000)
    (line,) = [r.getMessage() for r in caplog.records]
    assert len(line) < 500 and line.endswith("...")


# --- end to end: a real broker, the real loop -------------------------------------------------


@pytest.fixture(scope="module")
def model(resnet20_weights: Path) -> StagedModel:
    torch.set_num_threads(1)
    return load_model("resnet20", resnet20_weights)


def _good(model: StagedModel, i: int, t: float) -> records.Record:
    """A record of the shapes ResNet-20 produces (values do not matter to the check)."""
    rng = np.random.default_rng(i)
    acts = {
        cut: records.to_wire(rng.standard_normal(s[0] * 16).astype(np.float32), s[0])
        for cut, s in model.cut_shapes().items()
    }
    scores = rng.standard_normal(10).astype(np.float32)
    label = int(scores.argmax())
    return records.Record(
        "m", f"req-{i}", 0, t, acts, served_label=label, base_label=label, base_scores=scores
    )


def _implausible(good: records.Record, now: float) -> list[tuple[str, bytes]]:
    """(expected outcome, wire bytes) for one of each kind of bad record."""
    a = good.activations
    one_channel = {**a, "layer1.0": a["layer1.0"][:1]}  # C=1 at a 16-channel cut
    not_a_cut = {**a, "fc": a["layer3.2"]}
    bad = {
        "bad_label": {"base_label": 99},
        "bad_shape": {"activations": one_channel},
        "bad_layer": {"activations": not_a_cut},
        "bad_scores": {"base_scores": np.zeros(11, np.float32)},
        "stale": {"time": now - 10_000},  # the window's newest is about now - 100
        "future": {"time": now + 1e6},
        "malformed": {"base_scores": np.full(10, np.nan)},  # decode refuses NaN on the wire
    }
    out = [(o, records.encode(replace(good, request_id=o, **kw))) for o, kw in bad.items()]
    served = replace(good, request_id="served", served_label=42)
    return [*out, ("bad_label", records.encode(served)), ("malformed", b"junk")]


def _produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks=1, enable_idempotence=False, bootstrap_timeout_ms=5000
    )
    for v in values:
        producer.send(topic, key=b"m", value=v)
    producer.flush(30)
    producer.close()


def _consumed(metrics: TrainerMetrics) -> dict[str, float]:
    got = metrics.registry.get_sample_value
    outcomes = ("labelled", "bad_label", "bad_shape", "bad_layer", "bad_scores", "stale")
    outcomes += ("future", "malformed", "duplicate", "unlabelled")
    return {o: got("gati_trainer_records_consumed_total", {"outcome": o}) or 0 for o in outcomes}


def test_implausible_records_from_kafka_are_refused_and_good_ones_after_them_enter(
    model: StagedModel, kafka_bootstrap: str, redis_url: str, caplog
) -> None:
    now = time.time()
    good = [_good(model, i, now - 100 + i) for i in range(10)]
    bad = _implausible(good[4], now)
    many = [replace(good[0], request_id=f"label-{i}", base_label=99) for i in range(5)]
    values = [records.encode(r) for r in good[:5]] + [v for _, v in bad]
    values += [records.encode(r) for r in many + good[5:]]
    config = TrainerConfig(
        model="m",
        arch="resnet20",
        kafka_bootstrap=kafka_bootstrap,
        records_topic=f"acts-{uuid.uuid4().hex[:8]}",
        group_id=f"trainer-{uuid.uuid4().hex[:8]}",
        redis_url=redis_url,
    )  # min_records 1500: no round runs on these
    _produce(kafka_bootstrap, config.records_topic, values)

    metrics = TrainerMetrics()
    got = metrics.registry.get_sample_value
    loop = build_loop(config, model, metrics)
    loop.refusals.interval_s = 3600.0  # however slow the machine, one line per reason
    assert got("gati_trainer_last_record_age_seconds") == -1.0  # nothing accepted yet
    try:
        with caplog.at_level(logging.WARNING, logger="services.trainer.loop"):
            deadline = time.monotonic() + 180
            while len(loop.window) < 10 and time.monotonic() < deadline:
                loop.step()  # one partition: the bad records come before the last good ones
    finally:
        loop.source.close()
        loop.publisher.close()

    assert [r.request_id for r in loop.window.records()] == [f"req-{i}" for i in range(10)]
    assert _consumed(metrics) == {
        "labelled": 10,
        "bad_label": 2 + len(many),
        "bad_shape": 1,
        "bad_layer": 1,
        "bad_scores": 1,
        "stale": 1,
        "future": 1,
        "malformed": 2,
        "duplicate": 0,
        "unlabelled": 0,
    }
    assert got("gati_trainer_window_records") == 10
    assert got("gati_trainer_last_record_age_seconds") >= 0.0
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused")]
    per_reason = {o: sum(f" as {o};" in line for line in lines) for o, _ in bad}
    assert per_reason == dict.fromkeys(per_reason, 1), lines  # 7 bad labels: one line
