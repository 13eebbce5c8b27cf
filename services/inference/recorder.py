"""Activation records onto Kafka, never on the request path.

`submit` is all a request pays: it appends the job to a bounded in-memory queue (counted in
rows) or, when the queue is full, drops it and counts the drop. One worker thread does the
rest: reduce each recorded activation (`record_reduction`, pool4 by default), encode the row as
an `ActivationRecord` with float16 activations (`gati.records`), drop it if it would exceed
Kafka's 1 MB default, and hand it to a KafkaProducer keyed by model (per-model order). With
signing keys (`signing_keys`, gati.signing) each record carries its key id and HMAC in two
Kafka headers, computed here in the worker, so the trainer can refuse forged records.

Producer settings and why:
- acks=1, idempotence off: records are telemetry, a lost one costs nothing and duplicates are
  removed by the trainer (request id, row); idempotent producers keep per-broker sequence state
  that an in-memory broker (Tansu) forgets on restart, which turns into fatal producer errors.
- lz4, linger 10 ms, 256 KB batches: records of one model compress together (float16
  activations of similar images), and 10 ms of delay is nothing to a trainer.
- `max_block_ms` 200 ms and a 2 s bootstrap: a dead broker stalls only this worker, briefly.
- The producer is built lazily in the worker and rebuilt with exponential backoff, so a broker
  that is down at start never fails the service; while it is down, records are dropped as
  `kafka`. Records handed to the producer but not yet acknowledged are capped
  (`max_inflight`), so an outage cannot grow memory without bound.
Drop reasons (metric `gati_records_dropped{reason}`): queue_full, too_large, kafka, error,
shutdown.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque

import numpy as np
import torch
from kafka import KafkaProducer
from kafka.errors import KafkaError, KafkaTimeoutError, UnknownTopicOrPartitionError

from gati import records
from gati.probes.serving.reductions import grid, reduce
from services.common import cpus
from services.common.backoff import Backoff
from services.common.kafka import (
    BOOTSTRAP_TIMEOUT_MS,
    TopicMissing,
    ensure_topic,
    quiet_kafka_logging,
)
from services.inference.config import InferenceConfig
from services.inference.metrics import InferenceMetrics
from services.inference.record_jobs import RecordJob, RowRecord

log = logging.getLogger(__name__)

PRODUCER_SETTINGS = {
    "acks": 1,
    "enable_idempotence": False,
    "compression_type": "lz4",
    "linger_ms": 10,
    "batch_size": 256 * 1024,
    "max_block_ms": 200,
    "request_timeout_ms": 5000,
    "delivery_timeout_ms": 10000,  # a batch not acknowledged by then is dropped (counted)
    "retries": 3,
    "bootstrap_timeout_ms": BOOTSTRAP_TIMEOUT_MS,
    "reconnect_backoff_max_ms": 2000,
}
TOPIC_RECHECK_SECONDS = 5.0


def to_record(job: RecordJob, row: RowRecord, reduction: str) -> records.Record:
    """One batch row of a job, its activations reduced ([C, H, W] -> [C, G, G] float16)."""
    acts = {}
    with torch.inference_mode():
        for cut, t in row.activations:
            x = reduce(t.unsqueeze(0), reduction)  # [1, C*G*G] float32
            acts[cut] = records.to_wire(x[0].numpy(), t.shape[0])
    return records.Record(
        model=job.model,
        request_id=job.request_id,
        row=row.row,
        time=job.time,
        activations=acts,
        hit=row.hit,
        exit_layer=row.exit_layer,
        served_label=row.served_label,
        bundle_version=row.bundle_version,
        base_label=row.base_label,
        base_scores=None if row.base_scores is None else np.asarray(row.base_scores),
        shadow=row.shadow,
        lookup_rtt_ms=job.lookup_rtt_ms,
    )


class Recorder:
    """A RecordSink: bounded queue -> worker thread -> KafkaProducer."""

    def __init__(
        self,
        config: InferenceConfig,
        metrics: InferenceMetrics,
        *,
        max_inflight: int | None = None,
        limit: int = records.MAX_RECORD_BYTES,
        background_cpus: str = "",
    ) -> None:
        if not config.kafka_bootstrap:
            raise ValueError("kafka_bootstrap: the recorder needs Kafka bootstrap servers")
        grid(config.record_reduction)  # fail at start on an unknown reduction
        quiet_kafka_logging()
        self.bootstrap = config.kafka_bootstrap
        self.topic = config.records_topic
        self.create_topic = config.create_topic
        self.security = config.kafka_options()  # TLS and SASL, passed through (never logged)
        self.reduction = config.record_reduction
        self.keyring = config.keyring()  # None: records go unsigned (signing off)
        self.capacity = config.record_queue  # rows
        self.max_inflight = max_inflight or config.record_queue
        self.limit = limit
        self._metrics = metrics
        self._sent = metrics.records_sent
        self._dropped = {
            r: metrics.records_dropped.labels(r)
            for r in ("queue_full", "too_large", "kafka", "error", "shutdown")
        }
        self._jobs: deque[RecordJob] = deque()
        self._rows = 0  # rows queued, not yet taken by the worker
        self._busy = False
        self._closing = False
        self._cond = threading.Condition()
        self._inflight = 0  # handed to the producer, not yet acknowledged
        self._inflight_lock = threading.Lock()
        self._producer: KafkaProducer | None = None
        self._backoff = Backoff(0.5, 10.0)
        self._topic_checked = 0.0
        self._recheck_topic = False
        self._down_logged = False
        self._background_cpus = background_cpus
        self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)
        self._thread.start()
        metrics.threads.watch("recorder", self._thread)

    # --- request path ----------------------------------------------------------------------
    def submit(self, job: RecordJob) -> bool:
        """Queue a job's rows without blocking; False (counted) when they had to be dropped."""
        n = len(job.rows)
        with self._cond:
            if self._closing or self._rows + n > self.capacity:
                reason = "shutdown" if self._closing else "queue_full"
            else:
                self._jobs.append(job)
                self._rows += n
                self._cond.notify()
                return True
        self._dropped[reason].inc(n)
        return False

    # --- worker ----------------------------------------------------------------------------
    def _run(self) -> None:
        # One intra-op thread for this thread only (OpenMP's setting is per thread): pooling a
        # few small maps on 2 threads costs 10x more in wake-ups than it saves (measured:
        # 9 cuts of ResNet-20, 5.2 ms on 2 threads, 0.25 ms on 1), and serving needs the cores.
        torch.set_num_threads(1)
        cpus.to_background(self._background_cpus, "recorder")
        while True:
            with self._cond:
                self._busy = False
                self._cond.notify_all()
                while not self._jobs and not self._closing:
                    self._cond.wait()
                if not self._jobs:
                    return
                job = self._jobs.popleft()
                self._rows -= len(job.rows)
                self._busy = True
            try:
                self._handle(job)
            except Exception:
                self._metrics.threads.error("recorder")
                log.exception("recording request %s failed; its rows dropped", job.request_id)
                self._dropped["error"].inc(len(job.rows))

    def _handle(self, job: RecordJob) -> None:
        encoded: list[bytes] = []
        for row in job.rows:
            try:
                encoded.append(records.encode(to_record(job, row, self.reduction), self.limit))
            except records.RecordTooLarge as exc:
                self._dropped["too_large"].inc()
                log.debug("record %s/%d dropped: %s", job.request_id, row.row, exc)
        if not encoded:
            return
        producer = self._ready_producer()
        key = job.model.encode()
        for i, data in enumerate(encoded):
            if producer is None:
                self._dropped["kafka"].inc(len(encoded) - i)
                return
            with self._inflight_lock:
                full = self._inflight >= self.max_inflight
                if not full:
                    self._inflight += 1
            if full:  # the broker is not keeping up (or is gone): do not buffer more
                self._dropped["kafka"].inc()
                continue
            try:
                headers = None if self.keyring is None else self.keyring.headers(data)
                future = producer.send(self.topic, key=key, value=data, headers=headers)
            except KafkaError as exc:  # metadata unavailable within max_block_ms: broker down
                self._settle()
                self._dropped["kafka"].inc()
                self._unreachable(exc)
                producer = None
                continue
            future.add_callback(self._on_sent)
            future.add_errback(self._on_failed)

    def _settle(self) -> None:
        with self._inflight_lock:
            self._inflight -= 1

    def _on_sent(self, _metadata: object) -> None:  # producer I/O thread
        self._settle()
        self._sent.inc()

    def _on_failed(self, exc: BaseException) -> None:  # producer I/O thread
        self._settle()
        self._dropped["kafka"].inc()
        if isinstance(exc, UnknownTopicOrPartitionError | KafkaTimeoutError):
            self._recheck_topic = True  # a restarted broker may have lost the topic

    def _ready_producer(self) -> KafkaProducer | None:
        """The producer, (re)built when due; None while the broker is unreachable."""
        if not self._backoff.ready():
            return None
        try:
            if self._producer is None:
                self._check_topic()
                self._producer = KafkaProducer(
                    bootstrap_servers=self.bootstrap,
                    client_id="gati-recorder",
                    **PRODUCER_SETTINGS,
                    **self.security,
                )
                log.info("recording activations to Kafka %s topic %s", self.bootstrap, self.topic)
            elif self._recheck_topic and time.monotonic() - self._topic_checked > 5.0:
                self._check_topic()
        except KafkaError as exc:
            self._unreachable(exc)
            return None
        if self._down_logged:
            log.warning("Kafka %s reachable again", self.bootstrap)
            self._down_logged = False
        self._backoff.reset()
        return self._producer

    def _check_topic(self) -> None:
        self._topic_checked = time.monotonic()
        self._recheck_topic = False
        ensure_topic(self.bootstrap, self.topic, create=self.create_topic, security=self.security)

    def _unreachable(self, exc: BaseException) -> None:
        delay = self._backoff.failed()
        if not self._down_logged:
            log.warning(
                "Kafka %s unusable (%s): dropping activation records, retrying every <=%.0fs",
                self.bootstrap,
                str(exc) if isinstance(exc, TopicMissing) else type(exc).__name__,
                self._backoff.cap,
            )
            self._down_logged = True
        log.debug("Kafka retry in %.1fs", delay)

    # --- lifecycle -------------------------------------------------------------------------
    def pending(self) -> int:
        """Rows queued or handed to the producer and not yet settled (sent or dropped)."""
        with self._cond:
            queued = self._rows + (1 if self._busy else 0)
        return queued + self._inflight

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued row is sent or dropped; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._jobs or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        producer = self._producer
        if producer is not None:
            try:
                producer.flush(max(0.0, deadline - time.monotonic()))
            except KafkaError:
                return False
        while self._inflight > 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        return self._inflight == 0

    def close(self, timeout: float = 5.0) -> None:
        """Stop taking jobs, send what is queued within `timeout`, drop (count) the rest."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(max(0.0, deadline - time.monotonic()))
        with self._cond:
            left = self._rows
            self._jobs.clear()
            self._rows = 0
        if left:
            self._dropped["shutdown"].inc(left)
        if self._producer is not None:
            with contextlib.suppress(KafkaError):
                self._producer.flush(max(0.0, deadline - time.monotonic()))
            self._producer.close(timeout=max(0.0, deadline - time.monotonic()))
            self._producer = None
