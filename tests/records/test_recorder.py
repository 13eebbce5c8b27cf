"""The record producer against a real Kafka-protocol broker (Tansu): never blocks, counts drops."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from kafka import KafkaAdminClient, KafkaConsumer

from gati import records
from gati.models import StagedModel, load_model
from gati.probes.serving.reductions import reduce
from launch.ports import free_port
from launch.processes import start_tansu
from services.common.kafka import TopicMissing, ensure_topic
from services.inference.config import InferenceConfig
from services.inference.engine import Engine
from services.inference.metrics import InferenceMetrics
from services.inference.record_jobs import RecordJob, RowRecord
from services.inference.recorder import Recorder
from services.inference.served import ServedModel


def _config(bootstrap: str, topic: str, **kw: object) -> InferenceConfig:
    return InferenceConfig(
        model="m", arch="resnet20", kafka_bootstrap=bootstrap, records_topic=topic, **kw
    )


def _sent(metrics: InferenceMetrics) -> float:
    return metrics.registry.get_sample_value("gati_records_sent_total") or 0.0


def _dropped(metrics: InferenceMetrics, reason: str) -> float:
    value = metrics.registry.get_sample_value("gati_records_dropped_total", {"reason": reason})
    return value or 0.0


def consume(bootstrap: str, topic: str, n: int, timeout: float = 30.0) -> list:
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"test-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
    )
    out = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < n and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                out.extend(batch)
    finally:
        consumer.close()
    return out


def _job(model: str, channels: int, side: int, rows: int = 1) -> RecordJob:
    job = RecordJob(model, uuid.uuid4().hex, time.time())
    for r in range(rows):
        act = torch.rand(channels, side, side)
        job.rows.append(RowRecord(r, [("cut", act)], False, "", 1, 0, np.zeros(10), 1))
    return job


@pytest.fixture(scope="module")
def model(resnet20_weights: Path) -> StagedModel:
    return load_model("resnet20", resnet20_weights)


@pytest.fixture
def topic() -> str:
    return f"records-{uuid.uuid4().hex[:8]}"


def test_engine_records_round_trip_through_the_broker(
    model: StagedModel, kafka_bootstrap: str, topic: str
) -> None:
    metrics = InferenceMetrics()
    threads = torch.get_num_threads()
    recorder = Recorder(_config(kafka_bootstrap, topic), metrics)
    engine = Engine({"m": ServedModel("m", model)}, metrics, recorder=recorder)
    x = np.random.default_rng(0).integers(0, 256, size=(5, 32, 32, 3), dtype=np.uint8)
    try:
        first = engine.infer("m", x[:3], request_id="batch-of-3")
        second = engine.infer("m", x[3:], request_id="batch-of-2")
        assert recorder.flush(20)
    finally:
        recorder.close()
    assert _sent(metrics) == 5 and recorder.pending() == 0
    assert torch.get_num_threads() == threads  # the worker's 1 thread is its own setting
    msgs = consume(kafka_bootstrap, topic, 5)
    assert len(msgs) == 5
    assert {m.key for m in msgs} == {b"m"}
    got = {(r.request_id, r.row): r for r in (records.decode(m.value) for m in msgs)}
    assert set(got) == {("batch-of-3", i) for i in range(3)} | {("batch-of-2", i) for i in range(2)}
    logits, acts = model.forward_with_cuts(torch.from_numpy(x))
    for (rid, row), rec in got.items():
        i = row if rid == "batch-of-3" else 3 + row
        answer = first if rid == "batch-of-3" else second
        assert rec.labelled and not rec.hit and not rec.shadow and rec.bundle_version == 0
        assert rec.base_label == int(logits[i].argmax()) == answer.labels[row]
        # the record carries exactly what was served; the reference forward runs one batch
        # of 5, not 3 + 2, so its kernels may round differently (1e-5 seen on another CPU)
        np.testing.assert_array_equal(rec.base_scores, answer.scores[row])
        np.testing.assert_allclose(rec.base_scores, logits[i].numpy(), rtol=1e-4, atol=1e-5)
        assert list(rec.activations) == list(model.cut_names)
        for cut, a in acts.items():
            want = reduce(a[i : i + 1], "pool4")[0].numpy()  # [C*16]
            assert rec.activations[cut].dtype == np.float16
            assert rec.activations[cut].shape == (a.shape[1], 4, 4)
            np.testing.assert_allclose(rec.flat(cut), want, rtol=2e-3, atol=1e-4)
    sizes = [len(m.value) for m in msgs]
    assert max(sizes) < records.MAX_RECORD_BYTES
    print(f"resnet20 record, 9 cuts pool4: {min(sizes)}-{max(sizes)} bytes")


def test_oversize_records_are_dropped_and_counted(kafka_bootstrap: str, topic: str) -> None:
    metrics = InferenceMetrics()
    recorder = Recorder(_config(kafka_bootstrap, topic), metrics)
    try:
        assert recorder.submit(_job("m", 40_000, 4))  # 640k float16 values: 1.28 MB
        assert recorder.submit(_job("m", 16, 32, rows=2))  # 512 bytes of activation each
        assert recorder.flush(20)
    finally:
        recorder.close()
    assert _dropped(metrics, "too_large") == 1
    assert _sent(metrics) == 2
    msgs = consume(kafka_bootstrap, topic, 2)
    assert [records.decode(m.value).activations["cut"].shape for m in msgs] == [(16, 4, 4)] * 2


def test_broker_down_never_blocks_submit_and_recovers(tmp_path: Path, topic: str) -> None:
    port = free_port()
    bootstrap = f"127.0.0.1:{port}"
    metrics = InferenceMetrics()
    recorder = Recorder(_config(bootstrap, topic, record_queue=50), metrics)  # builds at once
    try:
        job = _job("m", 16, 32)
        waits = []
        accepted = 0
        for _ in range(200):
            t0 = time.perf_counter()
            accepted += recorder.submit(job)
            waits.append(time.perf_counter() - t0)
        # a blocking design would wait for max_block_ms (200 ms) or the bootstrap (2 s)
        assert max(waits) < 0.05, f"submit blocked for {max(waits) * 1e3:.1f} ms"
        assert recorder.flush(30)
        # every row is accounted for: queue full at submit, or dropped by the worker as kafka
        assert _dropped(metrics, "queue_full") == 200 - accepted >= 149
        assert _dropped(metrics, "kafka") == accepted and _sent(metrics) == 0

        broker = start_tansu(port, tmp_path)
        try:
            deadline = time.monotonic() + 30
            while _sent(metrics) == 0 and time.monotonic() < deadline:
                recorder.submit(_job("m", 16, 32))
                time.sleep(0.2)
            assert recorder.flush(20)
            assert _sent(metrics) >= 1, "no record delivered after the broker came up"
        finally:
            recorder.close()
            broker.stop()
    finally:
        recorder.close()


def _topics(bootstrap: str) -> set[str]:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, bootstrap_timeout_ms=5000)
    try:
        return set(admin.list_topics())
    finally:
        admin.close()


def test_a_recorder_told_not_to_create_the_topic_waits_for_it(
    kafka_bootstrap: str, topic: str
) -> None:
    """In a cluster the topic Job owns the topic (its replication); the recorder drops and
    counts records until the topic exists, never creating a replication-1 one itself."""
    with pytest.raises(TopicMissing, match=topic):
        ensure_topic(kafka_bootstrap, topic, create=False)
    metrics = InferenceMetrics()
    recorder = Recorder(_config(kafka_bootstrap, topic, create_topic=False), metrics)
    try:
        assert recorder.submit(_job("m", 16, 32))
        assert recorder.flush(20)
        assert _dropped(metrics, "kafka") == 1 and _sent(metrics) == 0
        assert topic not in _topics(kafka_bootstrap)

        ensure_topic(kafka_bootstrap, topic)  # what the topic Job does
        deadline = time.monotonic() + 40
        while _sent(metrics) == 0 and time.monotonic() < deadline:
            recorder.submit(_job("m", 16, 32))
            assert recorder.flush(20)
            time.sleep(0.2)
        assert _sent(metrics) >= 1, "no record delivered once the topic existed"
    finally:
        recorder.close()
    assert len(consume(kafka_bootstrap, topic, 1)) >= 1


def test_queue_full_drops_are_counted_per_row(kafka_bootstrap: str, topic: str) -> None:
    metrics = InferenceMetrics()
    recorder = Recorder(_config(kafka_bootstrap, topic, record_queue=8), metrics)
    try:
        big = _job("m", 64, 8, rows=5)
        results = [recorder.submit(big) for _ in range(20)]
        assert recorder.flush(30)
    finally:
        recorder.close()
    rejected = results.count(False)
    assert rejected >= 10  # 8 rows hold one 5-row job; the worker takes one now and then
    assert _dropped(metrics, "queue_full") == 5 * rejected
    assert _sent(metrics) == 5 * results.count(True)


def test_close_drops_nothing_silently(kafka_bootstrap: str, topic: str) -> None:
    metrics = InferenceMetrics()
    recorder = Recorder(_config(kafka_bootstrap, topic), metrics)
    for _ in range(30):
        recorder.submit(_job("m", 16, 32))
    recorder.close(timeout=10)
    assert not recorder.submit(_job("m", 16, 32))
    total = _sent(metrics) + sum(
        _dropped(metrics, r) for r in ("queue_full", "kafka", "shutdown", "error")
    )
    assert total == 31 and _dropped(metrics, "shutdown") >= 1
