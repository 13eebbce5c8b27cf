"""Kafka plumbing shared by the record producer (inference) and the trainer's consumer.

Facts this code relies on (measured against Tansu with kafka-python
3.0.x): a client constructor blocks until it reaches a broker, so every client is built with a
short `bootstrap_timeout_ms` and off the request path; a broker may not create topics on its
own (Apache Kafka with auto-create off) and a restarted Tansu has forgotten every topic, so
both sides create the topic when it is missing (idempotent); kafka-python logs every failed
reconnect at ERROR, which would flood a service's log while a broker is down, so its loggers
are quietened and the services log state changes themselves.
"""

from __future__ import annotations

import logging

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

log = logging.getLogger(__name__)

BOOTSTRAP_TIMEOUT_MS = 2000  # a client constructor gives up on an unreachable broker this fast


def quiet_kafka_logging() -> None:
    """Silence kafka-python's per-reconnect ERROR lines unless logging was configured for it."""
    logger = logging.getLogger("kafka")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.CRITICAL)


class TopicMissing(KafkaError):
    """The topic does not exist and this service was told not to create it."""


def ensure_topic(
    bootstrap: str, topic: str, partitions: int = 1, timeout_ms: int = 3000, create: bool = True
) -> str:
    """Create `topic` unless it exists (or raise TopicMissing if `create` is off); return its
    topic id.

    A cluster turns creation off: a service's replication-1 topic would otherwise pre-empt the
    topic Job's replication 3 (the first broker to answer accepts it).

    The id tells a consumer whether the topic it reads is still the one it joined: a broker
    that lost its state (a restarted Tansu) gives the re-created topic a new id, while its
    offsets start from 0 again. Raises KafkaError (e.g. KafkaTimeoutError) when the broker
    cannot be reached.
    """
    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap,
        bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS,
        request_timeout_ms=timeout_ms,
        client_id="gati-admin",
    )
    try:
        if topic not in admin.list_topics():
            if not create:
                raise TopicMissing(
                    f"topic {topic} does not exist and create_topic is off: create it first "
                    "(in Kubernetes, the gati-kafka-topics Job)"
                )
            try:
                admin.create_topics([NewTopic(topic, partitions, 1)], timeout_ms=timeout_ms)
                log.info("created Kafka topic %s (%d partitions)", topic, partitions)
            except TopicAlreadyExistsError:  # another client won the race
                pass
        (described,) = admin.describe_topics([topic])
        if described.get("error_code"):
            raise KafkaError(f"describe topic {topic}: error {described['error_code']}")
        return str(described.get("topic_id") or "")
    finally:
        admin.close()


__all__ = [
    "BOOTSTRAP_TIMEOUT_MS",
    "KafkaError",
    "TopicMissing",
    "ensure_topic",
    "quiet_kafka_logging",
]
