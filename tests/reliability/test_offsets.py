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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from kafka import KafkaAdminClient, KafkaProducer, TopicPartition

from gati import records
from launch.ports import LOCALHOST, free_port
from launch.processes import ManagedProcess, start_redis, start_service, start_tansu, wait_serving
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


@dataclass
class Servers:
    """The private broker and Redis, and the trainer's description: the test starts the
    trainer (twice), the fixture stops whatever is in `procs`."""

    trainer: Trainer
    log_path: Path
    procs: dict[str, ManagedProcess] = field(default_factory=dict)

    def start_trainer(self) -> float:
        """Start the trainer as procs["trainer"]; seconds until it is SERVING."""
        start = time.monotonic()
        proc = self.procs["trainer"] = start_service(self.trainer, self.log_path)
        try:
            wait_serving(self.trainer, proc, 120)
        except Exception as exc:
            raise RuntimeError(f"trainer did not start:\n{proc.log_tail()}") from exc
        return time.monotonic() - start


@pytest.fixture
def servers(tmp_path: Path, resnet20_weights: Path) -> Iterator[Servers]:
    kafka_port, redis_port = free_port(), free_port()
    trainer = Trainer(
        port=free_port(), metrics_port=free_port(), host=LOCALHOST,
        model=Model(MODEL, "resnet20", resnet20_weights),
        kafka_bootstrap=f"{LOCALHOST}:{kafka_port}", redis_url=f"redis://{LOCALHOST}:{redis_port}/0",
        extra=("--records-topic", TOPIC, "--group-id", GROUP,
               "--window-records", str(2 * K), "--min-records", str(2 * K),
               "--retrain-every", "1000000000", "--retrain-seconds", "1e9"),
    )  # fmt: skip
    servers = Servers(trainer, tmp_path / "trainer.log")
    try:
        servers.procs["kafka"] = start_tansu(kafka_port, tmp_path)
        servers.procs["redis"] = start_redis(redis_port, tmp_path)
        ensure_topic(trainer.kafka_bootstrap, TOPIC)
        yield servers
    finally:
        for proc in reversed(servers.procs.values()):
            proc.stop()


def test_trainer_restart_resumes_at_the_committed_offset(
    servers: Servers, figures: Figures
) -> None:
    bootstrap = servers.trainer.kafka_bootstrap
    metrics_port = servers.trainer.metrics_port
    committed = Committed(bootstrap)
    stream = threading.Thread(target=_produce, args=(bootstrap, range(FIRST, K), PACE))
    try:
        servers.start_trainer()
        _produce(bootstrap, range(FIRST))
        wait_until(lambda: committed() == FIRST, 60, f"the first {FIRST} records committed")
        stream.start()  # the rest, over a few seconds: the trainer dies in the middle of it
        wait_until(lambda: committed() > FIRST, 30, "records of the stream committed")
        first = scrape(metrics_port).by("gati_trainer_records_consumed_total", "outcome")
        servers.procs["trainer"].kill()
        at_kill = committed()  # nothing can commit for the group now
        still_producing = stream.is_alive()
        stream.join(60)
        restart = servers.start_trainer()
        caught_up = wait_until(lambda: committed() == K, 60, f"commits reaching {K}")
        second = scrape(metrics_port).by("gati_trainer_records_consumed_total", "outcome")
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
