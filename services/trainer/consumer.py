"""The trainer's Kafka side: a consumer-group member with manual commits that outlives brokers.

At least once: `poll` hands out records, the caller absorbs them into its window and then
calls `commit`, which commits exactly the positions after what `poll` returned. A crash
between the two re-delivers those records to the next member of the group; the window drops
the duplicates by (request id, row).

Surviving a broker restart. kafka-python reconnects by itself, but a restarted in-memory
broker (Tansu) has forgotten the topic, the group and its offsets, and the re-created topic
starts at offset 0 while the old consumer keeps fetching from its old position (it would wait
forever). So every `topic_check_seconds`, and after any error, the source checks the topic
(creating it when missing) and compares its topic id with the one it joined; on a new id, or
after an outage, it builds a fresh consumer, which joins the group again and starts from the
committed offsets, or from the earliest record when there are none (a fresh cluster). After a
mere network blip the committed offsets are still there, so nothing is skipped and at most
the uncommitted records come again.

Settings that matter on Tansu (measured, kafka-python 3.0.x): `auto_offset_reset="earliest"` (LATEST
offsets are wrong there), a ~6 s session timeout (a group join takes about half of it), and
short request timeouts so that a dead broker stalls `poll` for seconds, not minutes.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from kafka import KafkaConsumer
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaError

from services.common.backoff import Backoff
from services.common.kafka import (
    BOOTSTRAP_TIMEOUT_MS,
    TopicMissing,
    ensure_topic,
    quiet_kafka_logging,
)

log = logging.getLogger(__name__)


class RecordSource:
    def __init__(
        self,
        bootstrap: str,
        topic: str,
        group_id: str,
        *,
        session_timeout_ms: int = 6000,
        topic_check_seconds: float = 5.0,
        create_topic: bool = True,
        max_poll_records: int = 500,
        on_commit_error: Callable[[], None] | None = None,
        on_rejoin: Callable[[str], None] | None = None,
        on_error: Callable[[], None] | None = None,
        security: dict[str, Any] | None = None,
    ) -> None:
        quiet_kafka_logging()
        self.bootstrap = bootstrap
        self.topic = topic
        self.group_id = group_id
        self.session_timeout_ms = session_timeout_ms
        self.topic_check_seconds = topic_check_seconds
        self.create_topic = create_topic
        self.security = security or {}  # KafkaSecurity.kafka_options(): TLS, SASL (never logged)
        self.max_poll_records = max_poll_records
        self._on_commit_error = on_commit_error or (lambda: None)
        self._on_rejoin = on_rejoin or (lambda reason: None)
        self._on_error = on_error or (lambda: None)  # an unexpected failure, not an outage
        self._consumer: KafkaConsumer | None = None
        self._topic_id: str | None = None
        self._checked = 0.0
        self._outage = False
        self._backoff = Backoff(0.5, 5.0)
        self._uncommitted = False
        self.rejoins = 0  # consumers built after the first (broker restarts, outages)

    # --- consuming -------------------------------------------------------------------------
    def poll(self, timeout_ms: int = 500) -> list[ConsumerRecord]:
        """Records in partition order ([] while the broker is unreachable; never raises)."""
        consumer = self._ready()
        if consumer is None:
            time.sleep(timeout_ms / 1000)
            return []
        try:
            batches = consumer.poll(timeout_ms=timeout_ms, max_records=self.max_poll_records)
        except KafkaError as exc:
            self._lost(exc)
            return []
        except Exception as exc:  # a client bug or a fetch it cannot parse: start afresh
            self._on_error()
            log.exception("Kafka poll failed unexpectedly; rebuilding the consumer")
            self._lost(exc)
            return []
        out = [r for tp in sorted(batches, key=lambda t: t.partition) for r in batches[tp]]
        self._uncommitted = self._uncommitted or bool(out)
        return out

    def commit(self) -> bool:
        """Commit the positions after every record `poll` returned; False (counted) on error."""
        if self._consumer is None or not self._uncommitted:
            return True
        try:
            self._consumer.commit(timeout_ms=max(2000, self.session_timeout_ms // 2))
        except KafkaError as exc:
            self._on_commit_error()
            self._lost(exc)
            return False
        self._uncommitted = False
        return True

    @property
    def connected(self) -> bool:
        return self._consumer is not None and not self._outage

    # --- keeping a consumer that can make progress -------------------------------------------
    def _ready(self) -> KafkaConsumer | None:
        now = time.monotonic()
        due = (
            self._consumer is None
            or self._outage
            or now - self._checked >= self.topic_check_seconds
        )
        if not due:
            return self._consumer
        if not self._backoff.ready():
            return None
        self._checked = now
        try:
            topic_id = ensure_topic(
                self.bootstrap, self.topic, create=self.create_topic, security=self.security
            )
        except KafkaError as exc:
            self._lost(exc)
            return None
        reason = None
        if self._consumer is None:
            reason = "start" if self._topic_id is None else "reconnect"
        elif self._outage:
            reason = "outage"
        elif topic_id != self._topic_id:
            reason = "topic re-created"
        if reason is not None:
            self._close_consumer()
            try:
                self._consumer = self._build()
            except KafkaError as exc:
                self._lost(exc)
                return None
            if reason != "start":
                self.rejoins += 1
                log.warning("Kafka consumer rebuilt (%s); resuming from committed offsets", reason)
            self._on_rejoin(reason)
        self._topic_id = topic_id
        self._outage = False
        self._backoff.reset()
        return self._consumer

    def _build(self) -> KafkaConsumer:
        consumer = KafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=self.group_id,
            client_id="gati-trainer",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=self.session_timeout_ms,
            heartbeat_interval_ms=max(500, self.session_timeout_ms // 6),
            max_poll_interval_ms=600_000,  # a retrain may keep the loop away from poll
            request_timeout_ms=5000,
            fetch_max_wait_ms=500,
            bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS,
            reconnect_backoff_max_ms=2000,
            max_partition_fetch_bytes=4 * 1024 * 1024,
            **self.security,
        )
        consumer.subscribe([self.topic])
        self._uncommitted = False
        log.info(
            "consuming %s from Kafka %s as group %s", self.topic, self.bootstrap, self.group_id
        )
        return consumer

    def _lost(self, exc: BaseException) -> None:
        if not self._outage:
            why = str(exc) if isinstance(exc, TopicMissing) else type(exc).__name__
            log.warning("Kafka %s unusable (%s): retrying", self.bootstrap, why)
        self._outage = True
        self._backoff.failed()

    def _close_consumer(self) -> None:
        if self._consumer is not None:
            with contextlib.suppress(Exception):  # a dead broker: leave without ceremony
                self._consumer.close(autocommit=False, timeout_ms=1000)
            self._consumer = None

    def close(self) -> None:
        self._close_consumer()
