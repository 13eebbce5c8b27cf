"""No secret in any log, any /metrics page or any error message of the real processes.

The three services run as `gati serve` processes (launch/topology.py, at --log-level=DEBUG so
that everything that is ever logged is) with every secret in their environment, as a
Deployment gives it from a Secret: GATI_REDIS_PASSWORD (the Redis really wants it),
GATI_KAFKA_SASL_PASSWORD (read and kept even with PLAINTEXT) and GATI_SIGNING_KEYS (a key
directory: bundles and records are signed and checked). They are exercised: health, a bundle
published and signed by `gati probes publish` that the cache service verifies and loads, one
inference request whose activation record the trainer consumes, /metrics of each; then
stopped, and every log file, the CLI's output and every metrics page is searched for each
secret value and the key file's contents. Starts that fail (a SASL protocol with no user; a
wrong Redis password) are searched too.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.stack import request
from gati import names
from gati.api import grpc_service_pb2_grpc as pb_grpc
from launch.ports import free_port
from launch.processes import ManagedProcess, start_redis, start_service, start_tansu, wait_serving
from launch.topology import Cache, Inference, Model, Service, Trainer
from tests.cache.helpers import make_bundle

REPO = Path(__file__).resolve().parents[2]
DEADLINE_S = 300.0  # generous: three services importing torch on two shared cores
MODEL = "sec-resnet20"
REDIS_PASSWORD = "redis-pw-in-env-7d21c9"  # throwaway test secrets
KAFKA_PASSWORD = "kafka-pw-in-env-c40e5a"
URL_PASSWORD = "redis-pw-in-url-91b3f7"


def wait_until(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {DEADLINE_S:.0f}s")
        time.sleep(0.2)


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        return reply.read().decode()


def total(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called `name` with `labels` in a /metrics page."""
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def secrets_found(text: str, secrets: dict[str, str]) -> list[str]:
    return [name for name, value in secrets.items() if value in text]


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only what a test gives reaches the processes (they inherit this environment)."""
    for var in list(os.environ):
        if var.startswith(names.ENV_PREFIX):
            monkeypatch.delenv(var)


@pytest.fixture
def servers(tmp_path: Path, clean_environment: None) -> Iterator[tuple[str, str, Path]]:
    """(redis URL, Kafka bootstrap, log dir) of a private Redis that wants REDIS_PASSWORD
    and a private broker, both logging into the log dir searched below."""
    log_dir = tmp_path / "logs"
    redis_port, kafka_port = free_port(), free_port()
    redis_proc = start_redis(redis_port, log_dir, REDIS_PASSWORD)
    kafka_proc = start_tansu(kafka_port, log_dir)
    try:
        yield f"redis://127.0.0.1:{redis_port}/0", f"127.0.0.1:{kafka_port}", log_dir
    finally:
        kafka_proc.stop()
        redis_proc.stop()


def run(service: Service, log_dir: Path, env: dict[str, str]) -> ManagedProcess:
    """Start `service` with `env` and wait until it is SERVING (its log tail on failure)."""
    proc = start_service(service, log_dir / f"{service.name}.log", env)
    try:
        wait_serving(service, proc, DEADLINE_S)
    except BaseException:
        proc.stop()
        raise AssertionError(f"{service.name} did not start:\n{proc.log_tail()}") from None
    return proc


def gati(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        env={**os.environ, **env},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=DEADLINE_S,
    )


def test_no_secret_reaches_a_log_a_metric_or_an_error(
    servers: tuple[str, str, Path],
    signing_keys: Path,
    resnet20_weights: Path,
    tmp_path: Path,
) -> None:
    redis_url, kafka, log_dir = servers
    (key_file,) = signing_keys.iterdir()
    key = key_file.read_text().strip()
    secrets = {
        "GATI_REDIS_PASSWORD": REDIS_PASSWORD,
        "GATI_KAFKA_SASL_PASSWORD": KAFKA_PASSWORD,
        f"signing key {key_file.name}": key,
        f"signing key {key_file.name} (first half)": key[: len(key) // 2],
    }
    env = {
        "GATI_REDIS_PASSWORD": REDIS_PASSWORD,
        "GATI_KAFKA_SASL_PASSWORD": KAFKA_PASSWORD,
        "GATI_SIGNING_KEYS": str(signing_keys),
    }
    model = Model(MODEL, "resnet20", resnet20_weights)
    ports = {k: free_port() for k in ("cache", "cm", "trainer", "tm", "inference", "im")}
    cache = Cache(
        port=ports["cache"], metrics_port=ports["cm"], redis_url=redis_url, log_level="DEBUG"
    )
    trainer = Trainer(
        port=ports["trainer"], metrics_port=ports["tm"], model=model, kafka_bootstrap=kafka,
        redis_url=redis_url, variants="linear", log_level="DEBUG",
    )  # fmt: skip
    inference = Inference(
        port=ports["inference"], metrics_port=ports["im"], model=model,
        cache_address=cache.address, kafka_bootstrap=kafka, log_level="DEBUG",
        extra=("--shadow-fraction", "0"),
    )  # fmt: skip
    outputs: dict[str, str] = {}
    procs: list[ManagedProcess] = []
    try:
        for service in (cache, trainer, inference):
            procs.append(run(service, log_dir, env))
        # a signed bundle through the CLI, the password from the environment; the cache
        # service checks the signature with the same keys and loads it
        bundle = make_bundle(seed=1).save(tmp_path / "bundle")
        published = gati(
            [
                *("probes", "publish", "--bundle", str(bundle), "--model", "sec-other"),
                *("--force", "--redis-url", redis_url, "--signing-keys", str(signing_keys)),
            ],
            {"GATI_REDIS_PASSWORD": REDIS_PASSWORD},
        )
        outputs["gati probes publish"] = published.stdout + published.stderr
        assert published.returncode == 0, outputs["gati probes publish"]
        wait_until(
            lambda: total(scrape(ports["cm"]), "gati_cache_bundle_version", model="sec-other") == 1,
            "the cache service loading the signed bundle",
        )
        # one request: a plan asked of the cache service, a signed record to Kafka
        image = np.random.default_rng(0).integers(0, 256, size=(1, 32, 32, 3), dtype=np.uint8)
        with grpc.insecure_channel(inference.address) as channel:
            reply = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
                request(MODEL, image), timeout=60
            )
        assert reply.model_name == MODEL
        wait_until(
            lambda: total(scrape(ports["tm"]), "gati_trainer_records_consumed_total") >= 1,
            "the trainer consuming the signed record",
        )
        for name, port in (("cache", ports["cm"]), ("trainer", ports["tm"])):
            outputs[f"{name} /metrics"] = scrape(port)
        outputs["inference /metrics"] = scrape(ports["im"])
        assert total(outputs["inference /metrics"], "gati_records_sent_total") >= 1
    finally:
        for proc in reversed(procs):
            proc.stop()
    logs = sorted(log_dir.glob("*.log"))
    assert {p.name for p in logs} >= {"cache.log", "trainer.log", "inference.log", "redis.log"}
    for path in logs:
        outputs[path.name] = path.read_text(errors="replace")
    assert "DEBUG" in outputs["cache.log"]  # the most verbose level was really on
    leaks = {
        where: found for where, text in outputs.items() if (found := secrets_found(text, secrets))
    }
    assert not leaks, f"secrets found: {leaks}"


def test_failed_starts_say_why_without_the_secret(
    servers: tuple[str, str, Path], signing_keys: Path, resnet20_weights: Path
) -> None:
    redis_url, kafka, log_dir = servers
    key = next(signing_keys.iterdir()).read_text().strip()
    wrong = "wrong-redis-pw-5a6e0d"
    secrets = {"kafka password": KAFKA_PASSWORD, "wrong password": wrong, "signing key": key}
    # SASL chosen, its user forgotten: the inference service refuses to start (exit 2)
    model = Model(MODEL, "resnet20", resnet20_weights)
    inference = Inference(port=free_port(), model=model, kafka_bootstrap=kafka, log_level="DEBUG")
    result = subprocess.run(
        inference.argv(),
        env={
            **os.environ,
            "GATI_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "GATI_KAFKA_SASL_PASSWORD": KAFKA_PASSWORD,
            "GATI_SIGNING_KEYS": str(signing_keys),
        },
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=DEADLINE_S,
    )
    said = result.stdout + result.stderr
    assert result.returncode == 2, said
    assert "invalid configuration: kafka_sasl_username: SASL needs it" in said
    assert "Traceback" not in said
    assert not secrets_found(said, secrets), said

    # a wrong Redis password: the cache service starts without bundles and says why
    cache = Cache(port=free_port(), metrics_port=free_port(), redis_url=redis_url)
    proc = run(cache, log_dir, {"GATI_REDIS_PASSWORD": wrong})
    try:
        wait_until(
            lambda: total(scrape(cache.metrics_port), "gati_cache_redis_errors_total") >= 1,
            "the cache service counting the refused AUTH",
        )
    finally:
        proc.stop()
    said = (log_dir / "cache.log").read_text(errors="replace")
    assert "invalid username-password pair" in said or "invalid password" in said, said
    assert not secrets_found(said, secrets), said


def test_a_password_in_the_redis_url_is_not_logged(
    servers: tuple[str, str, Path], clean_environment: None
) -> None:
    _, _, log_dir = servers
    down = f"redis://:{URL_PASSWORD}@127.0.0.1:{free_port()}/0"  # a Redis that is down
    cache = Cache(port=free_port(), metrics_port=free_port(), redis_url=down, name="url-cache")
    proc = run(cache, log_dir, {})
    try:
        wait_until(
            lambda: total(scrape(cache.metrics_port), "gati_cache_redis_errors_total") >= 1,
            "the cache service counting Redis down",
        )
    finally:
        proc.stop()
    said = (log_dir / "url-cache.log").read_text(errors="replace")
    assert "no bundles at start: redis redis://:***@" in said  # the line in question
    assert URL_PASSWORD not in said, said
