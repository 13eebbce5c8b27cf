"""After a trainer crash no acknowledged record is skipped: it resumes at the committed offset.

A real trainer process (its own topic and group on a private Tansu, so nothing else writes
there) consumes K labelled records with distinct request ids while they are being produced; it
is SIGKILLed mid-stream, after committing part of them. A new trainer in the same group must
read every record from the committed offset C to the end: exactly K - C distinct records
(what the killed one had absorbed but not committed comes again: at least once), and none
before C (the commits were kept), after which its own commits reach K. Distinct records are
what the trainer's window counts as `labelled` (it drops repeats of a request id as
`duplicate`), and a fresh process has seen none, so the count is exact.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from kafka import KafkaAdminClient, KafkaProducer, TopicPartition

from gati import records
from launch.ports import free_port
from launch.processes import ManagedProcess, start_redis, start_tansu, wait_for_health
from launch.topology import Model, Trainer
from services.common.kafka import ensure_topic
from tests.reliability.figures import Figures
from tests.reliability.load import wait_until
from tests.reliability.observe import scrape

MODEL = "offsets"
TOPIC = "reliability.offsets"
GROUP = "reliability-offsets"
K = 2000  # records produced
FIRST = 300  # produced and committed before the rest streams in
PACE = 400  # records per second of the rest: still streaming when the trainer dies


def _value(i: int) -> bytes:
    rec = records.Record(
        MODEL,
        f"req-{i}",
        0,
        float(i),
        {"layer1.1": records.to_wire(np.full(16, i % 7, np.float32), 16)},  # 16 channels, pool1
        base_label=i % 10,
        base_scores=np.zeros(10, np.float32),
    )
    return records.encode(rec)


def _produce(bootstrap: str, ids: range, pace: float | None = None) -> None:
    """Send records `ids` (at `pace` per second, or at once) and wait for their acks."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks=1, enable_idempotence=False)
    try:
        step = max(1, int(pace / 20)) if pace else len(ids)
        for start in range(ids.start, ids.stop, step):
            for i in range(start, min(start + step, ids.stop)):
                producer.send(TOPIC, key=MODEL.encode(), value=_value(i))
            if pace:
                time.sleep(0.05)
        producer.flush(30)
    finally:
        producer.close()


class Committed:
    """The group's committed offset on partition 0 (-1: none yet), read with an admin client."""

    def __init__(self, bootstrap: str) -> None:
        self.admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="reliability")
        self.tp = TopicPartition(TOPIC, 0)

    def __call__(self) -> int:
        found = self.admin.list_group_offsets({GROUP: [self.tp]})[GROUP].get(self.tp)
        return -1 if found is None else found.offset

    def close(self) -> None:
        self.admin.close()


@pytest.fixture
def servers(tmp_path: Path, resnet20_weights: Path) -> Iterator[dict[str, ManagedProcess]]:
    procs: dict[str, ManagedProcess] = {}
    try:
        kafka_port, redis_port, port = free_port(), free_port(), free_port()
        procs["kafka"] = start_tansu(kafka_port, tmp_path)
        procs["redis"] = start_redis(redis_port, tmp_path)
        ensure_topic(f"127.0.0.1:{kafka_port}", TOPIC)
        trainer = Trainer(
            port=port, metrics_port=0, model=Model(MODEL, "resnet20", resnet20_weights),
            kafka_bootstrap=f"127.0.0.1:{kafka_port}",
            redis_url=f"redis://127.0.0.1:{redis_port}/0",
            extra=("--records-topic", TOPIC, "--group-id", GROUP,
                   "--window-records", str(2 * K), "--min-records", str(2 * K),
                   "--retrain-every", "1000000000", "--retrain-seconds", "1e9"),
        )  # fmt: skip
        procs["trainer"] = ManagedProcess(trainer.name, trainer.argv(), tmp_path / "trainer.log")
        yield procs
    finally:
        for proc in reversed(procs.values()):
            proc.stop()


def _start(trainer: ManagedProcess) -> float:
    start = time.monotonic()
    trainer.start()
    port = trainer.argv[trainer.argv.index("--port") + 1]
    try:
        wait_for_health(f"127.0.0.1:{port}", Trainer.health, 120, trainer.proc)
    except Exception as exc:
        raise RuntimeError(f"trainer did not start:\n{trainer.log_tail()}") from exc
    return time.monotonic() - start


def test_trainer_restart_resumes_at_the_committed_offset(
    servers: dict[str, ManagedProcess], figures: Figures
) -> None:
    trainer = servers["trainer"]
    bootstrap = servers["kafka"].argv[servers["kafka"].argv.index("--listener-url") + 1][6:]
    committed = Committed(bootstrap)
    stream = threading.Thread(target=_produce, args=(bootstrap, range(FIRST, K), PACE))
    try:
        _start(trainer)
        _produce(bootstrap, range(FIRST))
        wait_until(lambda: committed() == FIRST, 60, f"the first {FIRST} records committed")
        stream.start()  # the rest, over a few seconds: the trainer dies in the middle of it
        wait_until(lambda: committed() > FIRST, 30, "records of the stream committed")
        first = scrape(trainer).by("gati_trainer_records_consumed_total", "outcome")
        trainer.kill()
        at_kill = committed()  # nothing can commit for the group now
        still_producing = stream.is_alive()
        stream.join(60)
        restart = _start(trainer)
        caught_up = wait_until(lambda: committed() == K, 60, f"commits reaching {K}")
        second = scrape(trainer).by("gati_trainer_records_consumed_total", "outcome")
    finally:
        committed.close()
        if stream.is_alive():
            stream.join(30)
    figures.faults.append(
        f"trainer SIGKILLed mid-stream ({K} records): committed offset {at_kill} at the kill "
        f"(it had read {first.get('labelled', 0):.0f} shortly before); the new one started in "
        f"{restart:.1f} s, read {second.get('labelled', 0):.0f} distinct records "
        f"({second.get('duplicate', 0):.0f} duplicates) and committed {K} {caught_up:.1f} s later"
    )
    print(f"\n{figures.faults[-1]}")
    assert FIRST < at_kill < K and still_producing  # killed mid-stream, part committed
    # every record from the committed offset on, none before it, each id once
    assert second.get("labelled", 0) == K - at_kill
    assert set(second) <= {"labelled", "duplicate"}  # nothing malformed or foreign
