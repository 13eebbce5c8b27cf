"""Redis over TLS with an ACL user: the cache service and the CLI reach it with the settings.

A private redis-server (TLS only: no plaintext port; certificates from the test CA; the
default user switched off, one ACL user "gati" with a password, written to an owner-only
config file, never onto a command line) stands in for a managed, secured Redis. A real cache
service built in this process with `redis_url=rediss://...`, `redis_username`,
`redis_password` and `redis_tls_ca` loads a bundle published through a BundleStore with the
same options (its `redis_options()`), follows a second one through pub/sub over the TLS
connection, and writes what is served back; `gati probes publish` and `gati probes rollback`
do the same with --redis-username and --redis-tls-ca, the password in GATI_REDIS_PASSWORD. A
wrong password, no user, no CA, or a CA with a plaintext URL each fail with one clear line,
not a traceback, and the password is in none of the output.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
import redis

from cli.main import main as gati_main
from gati import names
from gati.api import cache_pb2, cache_pb2_grpc
from gati.store import BundleStore
from launch.certificates import Certificates
from launch.ports import free_port
from launch.processes import ManagedProcess, redis_server_binary, wait_for_port
from services.cache.config import CacheConfig
from services.cache.server import CacheServer, build
from tests.cache.helpers import FINGERPRINT, MODEL, make_bundle
from tests.cache.helpers import wait_until as _wait_until

REPO = Path(__file__).resolve().parents[2]
DEADLINE_S = 60.0  # generous: two shared cores under load
USER = "gati"
PASSWORD = "tls-acl-pw-5f0c2e9b"
ENV_VARS = ("REDIS_URL", "REDIS_PASSWORD", "REDIS_USERNAME", "REDIS_TLS_CA", "SIGNING_KEYS")


def wait_until(predicate: Callable[[], bool]) -> None:
    _wait_until(predicate, timeout=DEADLINE_S, step=0.02)


def start_secured_redis(port: int, data_dir: Path, certs: Certificates) -> ManagedProcess:
    """redis-server with only a TLS port and one ACL user; the password in a 0600 file."""
    data_dir.mkdir(parents=True, exist_ok=True)
    conf = data_dir / "redis.conf"
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("user default off\n")  # no anonymous access at all
        f.write(f"user {USER} on >{PASSWORD} ~* &* +@all\n")
    argv = [
        redis_server_binary(),
        str(conf),
        *("--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1"),
        *("--tls-cert-file", str(certs["server"].cert.resolve())),
        *("--tls-key-file", str(certs["server"].key.resolve())),
        *("--tls-ca-cert-file", str(certs.ca.resolve())),
        *("--tls-auth-clients", "no"),  # server-authenticated TLS; the ACL user authenticates
        *("--save", "", "--appendonly", "no", "--dir", str(data_dir)),
    ]
    assert PASSWORD not in " ".join(argv)
    proc = ManagedProcess("redis-tls", argv, data_dir / "redis.log").start()
    try:
        wait_for_port("127.0.0.1", port, DEADLINE_S, proc.proc)
    except BaseException:
        proc.stop()
        raise RuntimeError(f"redis-server with TLS did not start:\n{proc.log_tail()}") from None
    return proc


@pytest.fixture(scope="module")
def secured_redis(tmp_path_factory: pytest.TempPathFactory, certs: Certificates) -> Iterator[str]:
    """rediss:// URL of the TLS + ACL Redis (localhost: the name its certificate holds)."""
    port = free_port()
    proc = start_secured_redis(port, tmp_path_factory.mktemp("redis-tls"), certs)
    yield f"rediss://localhost:{port}/0"
    proc.stop()


@pytest.fixture
def config(secured_redis: str, certs: Certificates) -> CacheConfig:
    """The cache service's settings for the secured Redis (emptied first)."""
    config = CacheConfig(
        host="127.0.0.1",
        port=0,
        metrics_port=-1,
        redis_url=secured_redis,
        redis_username=USER,
        redis_password=PASSWORD,
        redis_tls_ca=str(certs.ca),
        refresh_seconds=0.5,
    )
    client = redis.Redis.from_url(secured_redis, **config.redis_options())
    client.flushall()
    client.close()
    return config


@pytest.fixture
def store(config: CacheConfig) -> Iterator[BundleStore]:
    s = BundleStore(config.redis_url, **config.redis_options())
    yield s
    s.close()


@pytest.fixture
def cache(config: CacheConfig) -> Iterator[CacheServer]:
    server = build(config)
    yield server
    server.stop(0)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No GATI_REDIS_* nor signing keys from the machine; no `gati up` stack nearby."""
    for var in ENV_VARS:
        monkeypatch.delenv(names.ENV_PREFIX + var, raising=False)
    monkeypatch.chdir(tmp_path)


def plan_version(stub: cache_pb2_grpc.CacheServiceStub) -> int:
    request = cache_pb2.PlanRequest(model=MODEL, model_fingerprint=FINGERPRINT)
    try:
        return stub.GetPlan(request, timeout=5).bundle_version
    except grpc.RpcError:
        return 0


def test_the_redis_really_wants_tls_the_user_and_the_password(
    secured_redis: str, certs: Certificates, config: CacheConfig
) -> None:
    """What the other tests rely on: nothing gets in without TLS, the user and its password."""
    port = secured_redis.rsplit(":", 1)[1].split("/")[0]
    ca = str(certs.ca)
    refused = {
        "plaintext": redis.Redis.from_url(
            f"redis://localhost:{port}/0", username=USER, password=PASSWORD
        ),
        "no user": redis.Redis.from_url(secured_redis, password=PASSWORD, ssl_ca_certs=ca),
        "wrong password": redis.Redis.from_url(
            secured_redis, username=USER, password="wrong", ssl_ca_certs=ca
        ),
        "system CAs only": redis.Redis.from_url(secured_redis, username=USER, password=PASSWORD),
    }
    for why, client in refused.items():
        with pytest.raises(redis.RedisError):
            client.ping()
            pytest.fail(f"{why}: let in")
        client.close()
    ok = redis.Redis.from_url(secured_redis, **config.redis_options())
    assert ok.acl_whoami() == USER
    ok.close()


def test_the_cache_service_loads_and_follows_bundles_over_tls_as_the_acl_user(
    config: CacheConfig, store: BundleStore, cache: CacheServer
) -> None:
    assert config.redis_options() == {
        "password": PASSWORD,
        "username": USER,
        "ssl_ca_certs": config.redis_tls_ca,
    }
    assert PASSWORD not in repr(config)
    assert store.publish(make_bundle(seed=1)) == 1
    with grpc.insecure_channel(f"127.0.0.1:{cache.port}") as channel:
        stub = cache_pb2_grpc.CacheServiceStub(channel)
        wait_until(lambda: plan_version(stub) == 1)
        assert store.publish(make_bundle(seed=2)) == 2  # announced on pub/sub, over TLS too
        wait_until(lambda: plan_version(stub) == 2)
    # the plan request said what is served: the cache service wrote it back as the ACL user
    wait_until(lambda: store.served() == {MODEL: [FINGERPRINT]})


def test_publish_and_rollback_through_the_cli_with_user_ca_and_env_password(
    config: CacheConfig,
    store: BundleStore,
    cache: CacheServer,
    certs: Certificates,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    clean_env: None,
) -> None:
    bundle_dir = make_bundle(seed=3).save(tmp_path / "bundle")
    monkeypatch.setenv("GATI_REDIS_PASSWORD", PASSWORD)
    redis_flags = [
        *("--redis-url", config.redis_url, "--redis-username", USER),
        *("--redis-tls-ca", str(certs.ca)),
    ]
    for expected in ("1", "2"):
        assert gati_main(["probes", "publish", "--bundle", str(bundle_dir), *redis_flags]) == 0
        out, err = capsys.readouterr()
        assert out.strip() == expected and PASSWORD not in out + err
    with grpc.insecure_channel(f"127.0.0.1:{cache.port}") as channel:
        stub = cache_pb2_grpc.CacheServiceStub(channel)
        wait_until(lambda: plan_version(stub) == 2)
        rollback = ["probes", "rollback", "--bundle-version", "1", "--model", MODEL]
        assert gati_main([*rollback, *redis_flags]) == 0
        assert PASSWORD not in "".join(capsys.readouterr())
        wait_until(lambda: plan_version(stub) == 1)
    assert store.versions(MODEL) == [1, 2] and store.pointer(MODEL) == 1


def test_the_user_and_ca_also_come_from_the_environment(
    config: CacheConfig,
    store: BundleStore,
    certs: Certificates,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    clean_env: None,
) -> None:
    bundle_dir = make_bundle(seed=4).save(tmp_path / "bundle")
    for var, value in {
        "REDIS_URL": config.redis_url,
        "REDIS_USERNAME": USER,
        "REDIS_PASSWORD": PASSWORD,
        "REDIS_TLS_CA": str(certs.ca),
    }.items():
        monkeypatch.setenv(names.ENV_PREFIX + var, value)
    assert gati_main(["probes", "publish", "--bundle", str(bundle_dir)]) == 0
    assert capsys.readouterr().out.strip() == "1"
    assert store.pointer(MODEL) == 1


def run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`gati ARGS` as a user runs it: its own process, so a traceback would be seen."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(names.ENV_PREFIX)}
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        env={**clean, **env},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,  # a hang is a failure; never reached by a working command
    )


def test_wrong_credentials_fail_with_one_clear_message(
    config: CacheConfig, store: BundleStore, certs: Certificates, tmp_path: Path
) -> None:
    bundle_dir = make_bundle(seed=5).save(tmp_path / "bundle")
    assert store.publish(make_bundle(seed=6)) == 1
    ca = str(certs.ca)
    publish = ["probes", "publish", "--bundle", str(bundle_dir), "--redis-url", config.redis_url]
    rollback = ["probes", "rollback", "--bundle-version", "1", "--model", MODEL]
    rollback += ["--redis-url", config.redis_url]
    wrong = "wrong-pw-0b7d1c"
    cases = [  # (argv, env, exit code, what stderr says)
        (
            [*publish, "--redis-username", USER, "--redis-tls-ca", ca],
            {"GATI_REDIS_PASSWORD": wrong},
            1,
            "invalid username-password pair",
        ),
        (
            [*rollback, "--redis-username", USER, "--redis-tls-ca", ca],
            {"GATI_REDIS_PASSWORD": wrong},
            1,
            "invalid username-password pair",
        ),
        (  # the default user is off: no --redis-username is refused too
            [*rollback, "--redis-tls-ca", ca],
            {"GATI_REDIS_PASSWORD": PASSWORD},
            1,
            "invalid username-password pair",
        ),
        (  # a private CA's certificate is not trusted by the system's CAs
            [*rollback, "--redis-username", USER],
            {"GATI_REDIS_PASSWORD": PASSWORD},
            1,
            "certificate verify failed",
        ),
        (  # TLS is the URL's scheme: a CA with redis:// would silently go unencrypted
            [
                *rollback[:-2],
                *("--redis-url", config.redis_url.replace("rediss:", "redis:")),
                *("--redis-username", USER, "--redis-tls-ca", ca),
            ],
            {"GATI_REDIS_PASSWORD": PASSWORD},
            2,
            "redis_tls_ca: given, but the Redis URL",
        ),
        (
            [*rollback, "--redis-username", USER, "--redis-tls-ca", str(tmp_path / "none.pem")],
            {"GATI_REDIS_PASSWORD": PASSWORD},
            2,
            "redis_tls_ca: ",
        ),
    ]
    for argv, env, code, says in cases:
        result = run_cli(argv, env)
        output = result.stdout + result.stderr
        assert (result.returncode, says in result.stderr) == (code, True), output
        assert "Traceback" not in output, output
        assert PASSWORD not in output and wrong not in output, output
        assert len(result.stderr.strip().splitlines()) <= 2, output  # a message, not a dump
    assert store.pointer(MODEL) == 1 and store.versions(MODEL) == [1]  # nothing got through
