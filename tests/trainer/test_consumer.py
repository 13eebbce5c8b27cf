"""The trainer's Kafka source against a real broker: at-least-once, resumes, survives restarts."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import numpy as np
from kafka import KafkaAdminClient, KafkaProducer

from gati import records
from launch.ports import free_port
from launch.processes import start_tansu
from services.common.kafka import ensure_topic
from services.trainer.consumer import RecordSource


def _value(i: int) -> bytes:
    rec = records.Record(
        "m",
        f"req-{i}",
        0,
        float(i),
        {"c": records.to_wire(np.full(16, i, np.float32), 1)},
        base_label=i % 10,
        base_scores=np.zeros(10, np.float32),
    )
    return records.encode(rec)


def produce(bootstrap: str, topic: str, ids: range) -> None:
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks=1, enable_idempotence=False, bootstrap_timeout_ms=5000
    )
    for i in ids:
        producer.send(topic, key=b"m", value=_value(i))
    producer.flush(10)
    producer.close()


def drain(source: RecordSource, want: int, timeout: float = 40.0, commit: bool = True) -> list[int]:
    """Poll until `want` records came (committing after each batch); their ids in order."""
    got: list[int] = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        batch = source.poll(300)
        got += [int(records.decode(m.value).request_id.split("-")[1]) for m in batch]
        if batch and commit:
            assert source.commit()
    return got


def _source(bootstrap: str, topic: str, group: str, **kw: object) -> RecordSource:
    return RecordSource(bootstrap, topic, group, session_timeout_ms=6000, **kw)


def test_committed_records_are_not_redelivered_and_none_skipped(kafka_bootstrap: str) -> None:
    topic, group = f"acts-{uuid.uuid4().hex[:8]}", f"trainer-{uuid.uuid4().hex[:8]}"
    ensure_topic(kafka_bootstrap, topic)
    produce(kafka_bootstrap, topic, range(30))
    first = _source(kafka_bootstrap, topic, group, max_poll_records=10)
    got = drain(first, 10)  # one batch of 10, committed
    assert got == list(range(10))
    first.close()  # leaves the group: the next member need not wait for the session timeout

    produce(kafka_bootstrap, topic, range(30, 50))
    second = _source(kafka_bootstrap, topic, group)
    try:
        rest = drain(second, 40)
        time.sleep(1.0)
        rest += drain(second, 1, timeout=2.0)  # nothing more may come
    finally:
        second.close()
    assert rest == list(range(10, 50))


def test_a_source_told_not_to_create_the_topic_waits_for_it(kafka_bootstrap: str) -> None:
    topic, group = f"acts-{uuid.uuid4().hex[:8]}", f"trainer-{uuid.uuid4().hex[:8]}"
    source = _source(kafka_bootstrap, topic, group, create_topic=False)
    try:
        assert source.poll(300) == []
        admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, bootstrap_timeout_ms=5000)
        try:
            assert topic not in admin.list_topics()  # the source did not create it
        finally:
            admin.close()
        ensure_topic(kafka_bootstrap, topic)  # what the topic Job does
        produce(kafka_bootstrap, topic, range(5))
        assert sorted(drain(source, 5)) == list(range(5))
    finally:
        source.close()


def test_uncommitted_records_come_again(kafka_bootstrap: str) -> None:
    topic, group = f"acts-{uuid.uuid4().hex[:8]}", f"trainer-{uuid.uuid4().hex[:8]}"
    produce(kafka_bootstrap, topic, range(5))  # no topic yet: the producer's request creates it
    first = _source(kafka_bootstrap, topic, group)
    assert sorted(drain(first, 5, commit=False)) == list(range(5))
    first.close()  # crashed before committing: at least once means they are delivered again
    second = _source(kafka_bootstrap, topic, group)
    try:
        assert sorted(drain(second, 5)) == list(range(5))
    finally:
        second.close()


def test_source_survives_a_broker_restart_that_loses_everything(tmp_path: Path) -> None:
    port = free_port()
    bootstrap = f"127.0.0.1:{port}"
    topic, group = "gati.activations", "gati-trainer"
    source = _source(bootstrap, topic, group, topic_check_seconds=1.0)
    try:
        assert source.poll(100) == []  # no broker: returns, does not raise
        broker = start_tansu(port, tmp_path / "a")
        produce(bootstrap, topic, range(10))
        assert sorted(drain(source, 10)) == list(range(10))

        broker.stop()  # Tansu keeps nothing: topic, group and offsets are gone
        t0 = time.monotonic()
        assert source.poll(300) == [] and source.poll(300) == []
        assert time.monotonic() - t0 < 15, "poll stalled while the broker was down"
        broker = start_tansu(port, tmp_path / "b")
        produce(bootstrap, topic, range(100, 110))  # new offsets 0..9 in a new topic
        got = drain(source, 10)
        assert sorted(got) == list(range(100, 110))
        assert source.rejoins >= 1
    finally:
        source.close()
        broker.stop()
