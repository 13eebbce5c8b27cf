"""Kafka TLS and SASL settings: mapped to kafka-python, checked at start, the password secret.

Unit tests of `KafkaSecurity` as the inference service and the trainer inherit it: each
protocol maps to exactly the kafka-python options it needs (and every one is an option the
producer, the consumer and the admin client know); SASL without a user or a password is a
ConfigError naming the field; the password has no flag (argparse refuses one), is never in
`repr` nor `--help`, and comes from GATI_KAFKA_SASL_PASSWORD or the --config file.

Then real clients. Tansu 0.6.0 (the test broker) has SASL: `--authentication` makes it
demand a SCRAM handshake, but it keeps users in its storage and refuses `tansu user create`
itself unauthenticated, so an in-memory broker can have no user and only a refused handshake
can be tested (its TLS flags cannot be combined: `--cert` and `--key` conflict in its CLI, and
the listener stays plaintext). A Recorder built with SASL_PLAINTEXT options, against that
broker or against the plaintext one, fails cleanly: the records are dropped and counted as
`kafka`, the worker goes on (flush returns), nothing is sent, no password is logged; so does
the trainer's consumer. A PLAINTEXT Recorder is refused by the authenticating broker too
(it really enforces) and delivers to the plaintext one (the harness itself works).
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

from cli.main import main as gati_main
from gati import config as cfg
from gati.config import ConfigError
from launch.certificates import Certificates
from launch.ports import free_port
from launch.processes import ManagedProcess, tansu_argv, wait_for_port
from services.common.kafka import KafkaError, ensure_topic
from services.inference.config import InferenceConfig
from services.inference.metrics import InferenceMetrics
from services.inference.record_jobs import RecordJob, RowRecord
from services.inference.recorder import Recorder
from services.trainer.config import TrainerConfig
from services.trainer.consumer import RecordSource

DEADLINE_S = 120.0  # generous: two shared cores under load; a hang is what is caught
SECRET = "kafka-sasl-pw-3e8a41"  # a test's throwaway secret
SSL_KEYS = {"ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_check_hostname"}
SASL_KEYS = {"sasl_mechanism", "sasl_plain_username", "sasl_plain_password"}


def inference(**kw: object) -> InferenceConfig:
    return InferenceConfig(model="m", arch="resnet20", **kw)


def sasl(**kw: object) -> dict[str, object]:
    return {
        "kafka_security_protocol": "SASL_PLAINTEXT",
        "kafka_sasl_username": "gati",
        "kafka_sasl_password": SECRET,
        **kw,
    }


def ssl_files(certs: Certificates) -> dict[str, str]:
    return {
        "kafka_ssl_ca": str(certs.ca),
        "kafka_ssl_cert": str(certs["client"].cert),
        "kafka_ssl_key": str(certs["client"].key),
    }


# ---- mapping ------------------------------------------------------------------------------
@pytest.mark.parametrize("config_class", [InferenceConfig, TrainerConfig])
def test_each_protocol_maps_to_the_options_it_needs(config_class, certs: Certificates) -> None:
    def options(**kw: object) -> dict[str, object]:
        extra = {"model": "m", "arch": "resnet20"} if config_class is InferenceConfig else {}
        return config_class(**extra, **kw).kafka_options()

    assert options() == {"security_protocol": "PLAINTEXT"}
    files = ssl_files(certs)
    assert options(kafka_security_protocol="SSL", **files) == {
        "security_protocol": "SSL",
        "ssl_cafile": files["kafka_ssl_ca"],
        "ssl_certfile": files["kafka_ssl_cert"],
        "ssl_keyfile": files["kafka_ssl_key"],
        "ssl_check_hostname": True,
    }
    server_only = options(kafka_security_protocol="SSL", kafka_ssl_ca=str(certs.ca))
    assert server_only["ssl_certfile"] is None and server_only["ssl_keyfile"] is None
    for mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
        assert options(**sasl(kafka_sasl_mechanism=mechanism)) == {
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": mechanism,
            "sasl_plain_username": "gati",
            "sasl_plain_password": SECRET,
        }
    both = options(**sasl(kafka_security_protocol="SASL_SSL"), **files)
    assert both["security_protocol"] == "SASL_SSL"
    assert set(both) == {"security_protocol"} | SSL_KEYS | SASL_KEYS
    assert both["sasl_plain_password"] == SECRET and both["ssl_cafile"] == str(certs.ca)
    # SASL credentials of a protocol not chosen are not passed (a Secret mounted for a
    # broker that does not ask); TLS files are refused: a CA with PLAINTEXT would be unused
    assert options(kafka_sasl_username="gati") == {"security_protocol": "PLAINTEXT"}
    with pytest.raises(ConfigError, match="kafka_ssl_ca: applies to SSL and SASL_SSL only"):
        options(kafka_ssl_ca=str(certs.ca))


def test_every_option_is_one_the_kafka_clients_take(certs: Certificates) -> None:
    """A key kafka-python does not know is refused at construction, with the whole remaining
    config (password included) in the message: none may be produced."""
    config = inference(**sasl(kafka_security_protocol="SASL_SSL"), **ssl_files(certs))
    for client in (KafkaProducer, KafkaConsumer, KafkaAdminClient):
        unknown = set(config.kafka_options()) - set(client.DEFAULT_CONFIG)
        assert not unknown, f"{client.__name__} does not take {unknown}"


# ---- checks at start ----------------------------------------------------------------------
def test_sasl_without_user_or_password_is_a_config_error_naming_the_field() -> None:
    for protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
        with pytest.raises(ConfigError, match=r"^kafka_sasl_username: SASL needs it"):
            inference(kafka_security_protocol=protocol, kafka_sasl_password=SECRET)
        with pytest.raises(ConfigError, match=r"^kafka_sasl_password: SASL needs it"):
            inference(kafka_security_protocol=protocol, kafka_sasl_username="gati")
        with pytest.raises(ConfigError, match=r"^kafka_sasl_username"):
            TrainerConfig(kafka_security_protocol=protocol)
    with pytest.raises(ConfigError, match=r"^kafka_security_protocol: 'TLS' invalid"):
        inference(kafka_security_protocol="TLS")
    with pytest.raises(ConfigError, match=r"^kafka_sasl_mechanism: 'GSSAPI' invalid"):
        inference(**sasl(kafka_sasl_mechanism="GSSAPI"))
    # the same from the environment, as a Deployment sets it, with the message naming it
    with pytest.raises(ConfigError, match=r"^kafka_sasl_password"):
        cfg.load(
            InferenceConfig,
            None,
            {
                "GATI_MODEL": "m",
                "GATI_ARCH": "resnet20",
                "GATI_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                "GATI_KAFKA_SASL_USERNAME": "gati",
            },
        )


def test_the_password_is_not_in_repr() -> None:
    configs = [
        inference(**sasl()),
        TrainerConfig(**sasl(), redis_password="redis-" + SECRET),
    ]
    for config in configs:
        assert config.kafka_sasl_password == SECRET  # there, only not shown
        assert SECRET not in repr(config) and SECRET not in str(config)
        assert "kafka_sasl_username='gati'" in repr(config)  # repr still shows the rest


# ---- no flag; environment and file --------------------------------------------------------
@pytest.mark.parametrize("kind", ["inference", "trainer"])
def test_the_password_has_no_flag_and_is_not_in_help(
    kind: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GATI_KAFKA_SASL_PASSWORD", SECRET)  # a default read from env: unshown
    with pytest.raises(SystemExit) as exited:
        gati_main(["serve", kind, "--help"])
    assert exited.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--kafka-sasl-username" in out and "--kafka-security-protocol" in out
    assert "--kafka-sasl-password" not in out and SECRET not in out
    assert "secrets (environment or --config file only):" in out
    assert "GATI_KAFKA_SASL_PASSWORD" in out
    with pytest.raises(SystemExit) as exited:
        gati_main(["serve", kind, "--kafka-sasl-password", "on-the-command-line"])
    assert exited.value.code == 2
    assert "unrecognized arguments: --kafka-sasl-password" in capsys.readouterr().err


@pytest.mark.parametrize("config_class", [InferenceConfig, TrainerConfig])
def test_the_password_comes_from_the_environment_or_the_config_file(
    config_class, tmp_path: Path
) -> None:
    parser = argparse.ArgumentParser()
    cfg.add_arguments(parser, config_class)
    flags = ["--model", "m", "--arch", "resnet20"]
    flags += ["--kafka-security-protocol", "SASL_PLAINTEXT", "--kafka-sasl-username", "gati"]
    env = {"GATI_KAFKA_SASL_PASSWORD": SECRET}
    from_env = cfg.load(config_class, parser.parse_args(flags), env)
    assert from_env.kafka_options()["sasl_plain_password"] == SECRET

    file = tmp_path / "gati.yaml"
    file.write_text(f"kafka_sasl_password: file-{SECRET}\nkafka_sasl_mechanism: SCRAM-SHA-512\n")
    with_file = [*flags, "--config", str(file)]
    from_file = cfg.load(config_class, parser.parse_args(with_file), {})
    assert from_file.kafka_options()["sasl_plain_password"] == f"file-{SECRET}"
    assert from_file.kafka_options()["sasl_mechanism"] == "SCRAM-SHA-512"
    # the environment wins over the file, as for every setting
    both = cfg.load(config_class, parser.parse_args(with_file), env)
    assert both.kafka_sasl_password == SECRET


# ---- real clients -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sasl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Tansu that demands a SASL (SCRAM) handshake of every client; it knows no user."""
    port = free_port()
    log_dir = tmp_path_factory.mktemp("kafka-sasl")
    proc = ManagedProcess("kafka-sasl", [*tansu_argv(port), "--authentication"], log_dir / "k.log")
    proc.start()
    try:
        wait_for_port("127.0.0.1", port, DEADLINE_S, proc.proc)
        yield f"127.0.0.1:{port}"
    finally:
        proc.stop()


def job(rows: int = 1) -> RecordJob:
    out = RecordJob("m", uuid.uuid4().hex, time.time())
    for r in range(rows):
        activations = [("cut", torch.rand(16, 8, 8))]
        out.rows.append(RowRecord(r, activations, False, "", 1, 0, np.zeros(10), 1))
    return out


def counted(metrics: InferenceMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels or None) or 0.0


def record(bootstrap: str, rows: int, **security: object) -> InferenceMetrics:
    """Submit `rows` records through a Recorder with `security`; wait until every one is
    settled (sent or dropped) and the worker is free again; return its metrics."""
    metrics = InferenceMetrics()
    config = inference(
        kafka_bootstrap=bootstrap, records_topic=f"sec-{uuid.uuid4().hex[:8]}", **security
    )
    recorder = Recorder(config, metrics)
    try:
        for _ in range(rows):
            assert recorder.submit(job())  # queued at once: never waits on the broker
        deadline = time.monotonic() + DEADLINE_S
        while recorder.pending() and time.monotonic() < deadline:
            recorder.flush(timeout=1.0)
        assert recorder.pending() == 0, "the recorder's worker is stuck"
        assert recorder.flush(timeout=DEADLINE_S)
    finally:
        recorder.close(timeout=DEADLINE_S)
    return metrics


def test_a_sasl_recorder_against_the_plaintext_broker_drops_cleanly(
    kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        metrics = record(kafka_bootstrap, 3, **sasl(kafka_sasl_mechanism="PLAIN"))
    assert counted(metrics, "gati_records_dropped_total", reason="kafka") == 3
    assert counted(metrics, "gati_records_sent_total") == 0
    assert counted(metrics, "gati_records_dropped_total", reason="error") == 0
    assert f"Kafka {kafka_bootstrap} unusable" in caplog.text
    assert SECRET not in caplog.text
    # the same recorder without SASL delivers there: the drops above are SASL's
    control = record(kafka_bootstrap, 2)
    assert counted(control, "gati_records_sent_total") == 2


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"])
def test_a_refused_sasl_handshake_is_a_counted_drop_not_a_hang(
    sasl_broker: str, mechanism: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        metrics = record(sasl_broker, 2, **sasl(kafka_sasl_mechanism=mechanism))
    assert counted(metrics, "gati_records_dropped_total", reason="kafka") == 2
    assert counted(metrics, "gati_records_sent_total") == 0
    assert SECRET not in caplog.text


def test_the_authenticating_broker_refuses_a_plaintext_client(sasl_broker: str) -> None:
    metrics = record(sasl_broker, 2)
    assert counted(metrics, "gati_records_dropped_total", reason="kafka") == 2
    assert counted(metrics, "gati_records_sent_total") == 0


def test_the_trainers_consumer_and_the_topic_check_fail_cleanly_too(
    sasl_broker: str, caplog: pytest.LogCaptureFixture
) -> None:
    security = TrainerConfig(**sasl(kafka_sasl_mechanism="SCRAM-SHA-512")).kafka_options()
    with pytest.raises(KafkaError):
        ensure_topic(sasl_broker, "sec-topic", security=security)
    with caplog.at_level(logging.DEBUG):
        source = RecordSource(sasl_broker, "sec-topic", "sec-group", security=security)
        try:
            for _ in range(3):
                assert source.poll(timeout_ms=100) == []  # never raises, never hangs
            assert not source.connected
        finally:
            source.close()
    assert SECRET not in caplog.text


def test_kafka_python_debug_logging_never_shows_the_password(
    kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Even with kafka-python's own loggers at DEBUG (its admin client logs its whole
    configuration there), the password is hidden."""
    security = TrainerConfig(**sasl(kafka_sasl_mechanism="PLAIN")).kafka_options()
    with caplog.at_level(logging.DEBUG, logger="kafka"), pytest.raises(KafkaError):
        ensure_topic(kafka_bootstrap, "sec-debug", security=security)
    assert "Starting KafkaAdminClient with configuration" in caplog.text
    assert "'sasl_plain_password': '***'" in caplog.text
    assert SECRET not in caplog.text


HANDSHAKE_PROBE = """
import sys
from services.common.kafka import KafkaError, ensure_topic
security = {"security_protocol": "SSL", "ssl_cafile": sys.argv[2], "ssl_check_hostname": True}
try:
    ensure_topic(sys.argv[1], "sec-tls", security=security)
except KafkaError as exc:
    print("refused:", type(exc).__name__)
"""


def test_an_ssl_client_against_a_plaintext_broker_fails_instead_of_hanging(
    kafka_bootstrap: str, certs: Certificates
) -> None:
    """In a child process, so that a hung client is killed, not left in this one."""
    try:
        result = subprocess.run(
            [sys.executable, "-c", HANDSHAKE_PROBE, kafka_bootstrap, str(certs.ca)],
            capture_output=True,
            text=True,
            timeout=45,  # the client's own bootstrap timeout is 2 s: 20x that is a hang
            cwd=Path(__file__).resolve().parents[2],
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the SSL client hung on the handshake")
    assert "refused:" in result.stdout, result.stdout + result.stderr
