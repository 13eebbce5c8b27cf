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
import socket
import ssl
from dataclasses import dataclass
from typing import Any

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError

from gati.config import check_choices, require, setting
from services.common.tls import read_pem

log = logging.getLogger(__name__)

BOOTSTRAP_TIMEOUT_MS = 2000  # a client constructor gives up on an unreachable broker this fast


class _HidePassword(logging.Filter):
    """kafka-python's admin client logs its whole configuration at DEBUG, SASL password too."""

    def filter(self, record: logging.LogRecord) -> bool:
        def hidden(value: object) -> object:
            if isinstance(value, dict) and value.get("sasl_plain_password"):
                return {**value, "sasl_plain_password": "***"}
            return value

        if isinstance(record.args, dict):  # one mapping argument: logging unwraps it
            record.args = hidden(record.args)  # type: ignore[assignment]
        elif isinstance(record.args, tuple):
            record.args = tuple(hidden(a) for a in record.args)
        return True


logging.getLogger("kafka.admin.client").addFilter(_HidePassword())  # whoever calls it


def quiet_kafka_logging() -> None:
    """Silence kafka-python's per-reconnect ERROR lines unless logging was configured for it."""
    logger = logging.getLogger("kafka")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.CRITICAL)


PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True)
class KafkaSecurity:
    """Config fields of a Kafka client's TLS and SASL, passed through to kafka-python (a mixin;
    call `check_kafka_security` in `__post_init__`). The password is a secret: environment
    (`GATI_KAFKA_SASL_PASSWORD`, from a Secret) or config file, never a flag, never logged."""

    kafka_security_protocol: str = setting(
        "PLAINTEXT", "how to reach the brokers", choices=PROTOCOLS
    )
    kafka_ssl_ca: str | None = setting(None, "PEM CA that verifies the brokers (SSL, SASL_SSL)")
    kafka_ssl_cert: str | None = setting(None, "PEM client certificate for brokers that ask")
    kafka_ssl_key: str | None = setting(None, "PEM private key of kafka_ssl_cert")
    kafka_sasl_mechanism: str = setting(
        "PLAIN", "SASL mechanism (SASL_PLAINTEXT, SASL_SSL)", choices=MECHANISMS
    )
    kafka_sasl_username: str | None = setting(None, "SASL username")
    kafka_sasl_password: str | None = setting(None, "SASL password", secret=True)

    def check_kafka_security(self) -> None:
        check_choices(self)
        sasl = self.kafka_security_protocol.startswith("SASL_")
        if sasl:
            require(self.kafka_sasl_username is not None, "kafka_sasl_username", "SASL needs it")
            require(
                self.kafka_sasl_password is not None,
                "kafka_sasl_password",
                "SASL needs it (env GATI_KAFKA_SASL_PASSWORD or the config file)",
            )
        require(
            (self.kafka_ssl_cert is None) == (self.kafka_ssl_key is None),
            "kafka_ssl_cert",
            "kafka_ssl_cert and kafka_ssl_key go together",
        )
        for name in ("kafka_ssl_ca", "kafka_ssl_cert", "kafka_ssl_key"):
            # a CA given for nothing means records would go unencrypted without a word
            require(
                getattr(self, name) is None or self.kafka_security_protocol.endswith("SSL"),
                name,
                f"applies to SSL and SASL_SSL only, not {self.kafka_security_protocol} "
                "(set kafka_security_protocol)",
            )
            read_pem(getattr(self, name), name)

    def kafka_options(self) -> dict[str, Any]:
        """Keyword arguments for KafkaProducer, KafkaConsumer and KafkaAdminClient."""
        options: dict[str, Any] = {"security_protocol": self.kafka_security_protocol}
        if self.kafka_security_protocol.endswith("SSL"):
            options.update(
                ssl_cafile=self.kafka_ssl_ca,
                ssl_certfile=self.kafka_ssl_cert,
                ssl_keyfile=self.kafka_ssl_key,
                ssl_check_hostname=True,
            )
        if self.kafka_security_protocol.startswith("SASL_"):
            options.update(
                sasl_mechanism=self.kafka_sasl_mechanism,
                sasl_plain_username=self.kafka_sasl_username,
                sasl_plain_password=self.kafka_sasl_password,
            )
        return options


def check_tls_handshake(bootstrap: str, security: dict[str, Any]) -> None:
    """Complete one TLS handshake with a bootstrap server within BOOTSTRAP_TIMEOUT_MS, or
    raise KafkaConnectionError. kafka-python 3.0 gives its own handshake no deadline: against
    a listener that never answers a ClientHello (a plaintext broker, a wrong port) a client
    constructor would hang, and with it the recorder's worker or the trainer's loop."""
    context = ssl.create_default_context(cafile=security.get("ssl_cafile"))
    if security.get("ssl_certfile"):
        context.load_cert_chain(security["ssl_certfile"], security.get("ssl_keyfile"))
    context.check_hostname = bool(security.get("ssl_check_hostname", True))
    failures = []
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        host = host.strip("[]")
        try:
            timeout = BOOTSTRAP_TIMEOUT_MS / 1000
            with (
                socket.create_connection((host, int(port)), timeout) as raw,
                context.wrap_socket(raw, server_hostname=host),
            ):
                return  # the handshake completed on entry
        except (OSError, ValueError) as exc:  # ssl.SSLError and timeouts are OSErrors
            failures.append(f"{server.strip()}: {type(exc).__name__} {exc}")
    raise KafkaConnectionError(f"no TLS handshake with Kafka: {'; '.join(failures)}")


class TopicMissing(KafkaError):
    """The topic does not exist and this service was told not to create it."""


def ensure_topic(
    bootstrap: str,
    topic: str,
    partitions: int = 1,
    timeout_ms: int = 3000,
    create: bool = True,
    security: dict[str, Any] | None = None,
) -> str:
    """Create `topic` unless it exists (or raise TopicMissing if `create` is off); return its
    topic id.

    A cluster turns creation off: a service's replication-1 topic would otherwise pre-empt the
    topic Job's replication 3 (the first broker to answer accepts it).

    The id tells a consumer whether the topic it reads is still the one it joined: a broker
    that lost its state (a restarted Tansu) gives the re-created topic a new id, while its
    offsets start from 0 again. Raises KafkaError (e.g. KafkaTimeoutError) when the broker
    cannot be reached. `security`: `KafkaSecurity.kafka_options()`.
    """
    if (security or {}).get("security_protocol", "PLAINTEXT").endswith("SSL"):
        check_tls_handshake(bootstrap, security or {})
    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap,
        bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS,
        request_timeout_ms=timeout_ms,
        client_id="gati-admin",
        **(security or {}),
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
    "KafkaSecurity",
    "TopicMissing",
    "ensure_topic",
    "quiet_kafka_logging",
]
