"""The trainer's loop thread: an unexpected error (in a step, or inside the Kafka client) is
counted and learning goes on; a loop that dies anyway turns health NOT_SERVING, and
`gati status` shows the window, the last record's age and the dead thread.

Real broker, real Redis, a real in-process trainer; errors are injected by replacing one
method of a running object (a test hook).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from kafka import KafkaProducer

from gati import names, records
from services.trainer.config import TrainerConfig
from services.trainer.server import TrainerServer, build
from tests.liveness_checks import freshness_line, health, sample, status_row, wait_for

MODEL = "m"


def produce(bootstrap: str, topic: str, ids: range) -> None:
    """Labelled records as the inference service writes them (ResNet-20, layer1.0, pool4)."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks=1, enable_idempotence=False)
    scores = np.zeros(10, np.float32)
    scores[1] = 5.0
    for i in ids:
        rec = records.Record(
            MODEL,
            f"req-{i}",
            0,
            time.time(),
            {"layer1.0": records.to_wire(np.ones(256, np.float32), 16)},
            base_label=1,
            base_scores=scores,
        )
        producer.send(topic, key=MODEL.encode(), value=records.encode(rec))
    producer.flush(30)
    producer.close()


@pytest.fixture
def trainer(
    kafka_bootstrap: str, redis_url: str, resnet20_weights: Path
) -> Iterator[tuple[TrainerServer, str]]:
    topic = f"acts-{uuid.uuid4().hex[:8]}"
    server = build(
        TrainerConfig(
            host="127.0.0.1",
            port=0,
            metrics_port=0,
            kafka_bootstrap=kafka_bootstrap,
            records_topic=topic,
            group_id=f"trainer-{uuid.uuid4().hex[:8]}",
            redis_url=redis_url,
            model=MODEL,
            arch="resnet20",
            weights=str(resnet20_weights),
            min_records=4000,
            window_records=4000,
            topic_check_seconds=1.0,
        )
    )
    yield server, topic
    server.stop(0)


def value(server: TrainerServer, name: str, **labels: str) -> float:
    return sample(server.metrics.registry, name, **labels) or 0.0


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_trainer_goes_on_after_errors_and_its_death_turns_health_off(
    trainer: tuple[TrainerServer, str], kafka_bootstrap: str
) -> None:
    server, topic = trainer
    window, errors = "gati_trainer_window_records", "gati_background_errors_total"
    assert server.metrics_port is not None
    produce(kafka_bootstrap, topic, range(20))
    wait_for(lambda: value(server, window) == 20, "20 records in the window", timeout=120)
    row = status_row("trainer", server.port, server.metrics_port, names.HEALTH_TRAINER)
    assert row.ok and row.dead_threads == [] and row.freshness["window_records"] == 20
    age = row.freshness["last_record_age_seconds"]
    assert age is not None and age >= 0  # a record entered the window, just now
    assert "window 20, last record " in freshness_line(row)
    assert value(server, errors, thread="trainer") == 0

    # Inside the Kafka client: counted, the consumer rebuilt, the next records absorbed.
    source = server.loop.source
    consumer = source._consumer
    assert consumer is not None

    def broken_poll(*args: object, **kwargs: object) -> dict:
        raise AssertionError("a fetch the client cannot parse")

    rejoins = value(server, "gati_trainer_consumer_rejoins_total")
    consumer.poll = broken_poll  # type: ignore[method-assign]
    wait_for(lambda: value(server, errors, thread="trainer") == 1, "the failed poll counted")
    wait_for(
        lambda: value(server, "gati_trainer_consumer_rejoins_total") == rejoins + 1,
        "a new consumer built",
    )
    assert source._consumer is not consumer
    produce(kafka_bootstrap, topic, range(20, 30))
    wait_for(lambda: value(server, window) == 30, "the next records absorbed", timeout=120)

    # In a step: counted, and the loop steps again.
    def broken_step() -> int:
        raise RuntimeError("not what a step expects")

    server.loop.step = broken_step  # type: ignore[method-assign]
    wait_for(lambda: value(server, errors, thread="trainer") >= 3, "two failed steps counted")
    assert health(server.port, names.HEALTH_TRAINER) == "SERVING"
    assert value(server, "gati_thread_alive", thread="trainer") == 1.0

    def exits() -> int:
        raise SystemExit  # ends the thread without a word: what the liveness watcher is for

    server.loop.step = exits  # type: ignore[method-assign]
    wait_for(lambda: health(server.port, names.HEALTH_TRAINER) == "NOT_SERVING", "health off")
    assert value(server, "gati_thread_alive", thread="trainer") == 0.0
    row = status_row("trainer", server.port, server.metrics_port, names.HEALTH_TRAINER)
    assert not row.ok and row.dead_threads == ["trainer"]
    assert "window 30, " in freshness_line(row) and freshness_line(row).endswith(" trainer")
