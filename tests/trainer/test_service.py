"""`gati serve trainer` as a separate process: health, metrics, crash and resume from offsets."""

from __future__ import annotations

import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
from kafka import KafkaProducer

from gati import records
from launch.ports import LOCALHOST, free_port
from launch.processes import start_service, wait_serving
from launch.topology import Model, Trainer


def _produce(bootstrap: str, topic: str, ids: range, model: str = "m") -> None:
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks=1, enable_idempotence=False, compression_type="lz4"
    )
    for i in ids:
        rec = records.Record(
            model,
            f"req-{i}",
            0,
            1000.0 + i,
            {"layer1.0": records.to_wire(np.ones(256), 16)},
            base_label=1,
            base_scores=np.zeros(10, np.float32),
        )
        producer.send(topic, key=model.encode(), value=records.encode(rec))
    producer.send(topic, key=b"m", value=b"\x08\x96\x01 not a record")
    producer.flush(10)
    producer.close()


def _metric(port: int, name: str, labels: str = "") -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith(name + (labels and "{" + labels + "}") + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _wait_metric(port: int, name: str, labels: str, value: float, timeout: float = 60) -> float:
    deadline = time.monotonic() + timeout
    seen = 0.0
    while time.monotonic() < deadline:
        seen = _metric(port, name, labels)
        if seen >= value:
            return seen
        time.sleep(0.3)
    return seen


def test_trainer_process_serves_health_and_resumes_from_committed_offsets(
    tmp_path: Path, kafka_bootstrap: str, redis_url: str, resnet20_weights: Path
) -> None:
    topic, group = f"acts-{uuid.uuid4().hex[:8]}", f"trainer-{uuid.uuid4().hex[:8]}"
    port, metrics_port = free_port(), free_port()
    trainer = Trainer(
        port=port, metrics_port=metrics_port, model=Model("m", "resnet20", resnet20_weights),
        kafka_bootstrap=kafka_bootstrap, redis_url=redis_url, host=LOCALHOST,
        extra=("--records-topic", topic, "--group-id", group,
               "--min-records", "4000", "--window-records", "4000"),
    )  # fmt: skip
    _produce(kafka_bootstrap, topic, range(40))
    first = start_service(trainer, tmp_path / "trainer1.log")
    try:
        wait_serving(trainer, first, timeout=120)
        consumed = 'outcome="labelled"'
        name = "gati_trainer_records_consumed_total"
        assert _wait_metric(metrics_port, name, consumed, 40) == 40, first.log_tail()
        assert _wait_metric(metrics_port, name, 'outcome="malformed"', 1) == 1
        assert _metric(metrics_port, "gati_trainer_window_records") == 40
        time.sleep(1.0)  # the commit follows the absorb within the same step
        first.kill()  # a crash: no goodbye to the group, no final commit
    finally:
        first.stop()

    _produce(kafka_bootstrap, topic, range(40, 65), model="other")  # another model's records
    _produce(kafka_bootstrap, topic, range(65, 75))
    second = start_service(trainer, tmp_path / "trainer2.log")
    try:
        wait_serving(trainer, second, timeout=120)
        # Only what came after the commit: 10 labelled, 25 of another model, 2 malformed.
        assert _wait_metric(metrics_port, name, 'outcome="other_model"', 25, timeout=90) == 25
        assert _wait_metric(metrics_port, name, consumed, 10) == 10, second.log_tail()
        time.sleep(2.0)
        assert _metric(metrics_port, name, consumed) == 10  # nothing committed came again
        assert _metric(metrics_port, name, 'outcome="malformed"') == 2
        assert _metric(metrics_port, name, 'outcome="duplicate"') == 0
        second.signal(15)
        second.proc.wait(timeout=30)  # SIGTERM: drains and exits cleanly
        assert second.proc.returncode == 0, second.log_tail()
    finally:
        second.stop()
