"""Signed bundles: the trainer signs what it publishes, the cache service refuses the rest.

A real cache service (built in this process on port 0, real Redis, real gRPC) with the
trainer's key serves what the trainer's `Publisher` signed, and refuses, like a corrupt
bundle, one signed with another secret under the same key id and one not signed at all: the
refused metric counts reason "signature", and lookups and plans go on answering with the
version before. With no keys (local development) nothing is checked, a sealed bundle is read
too. `gati probes publish --signing-keys` signs as the trainer does. Then the unit tests of
`gati.signing`: rotation, unknown keys, truncated seals, a mounted Secret's directory, short
keys.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from cli.main import main as gati_main
from gati import names
from gati.api import cache_pb2, cache_pb2_grpc
from gati.config import ConfigError
from gati.probes.serving.bundle import Bundle
from gati.signing import (
    KEY_HEADER,
    MAC_HEADER,
    SEAL_MAGIC,
    Keyring,
    SignatureError,
    open_bundle,
    split_seal,
)
from gati.store import BundleStore
from services.cache.config import CacheConfig
from services.cache.server import CacheServer, build
from services.trainer.metrics import TrainerMetrics
from services.trainer.publisher import Publisher
from tests.cache.helpers import FINGERPRINT, MODEL, Stream, lookup_request, make_bundle, sample
from tests.cache.helpers import wait_until as _wait_until

DEADLINE_S = 60.0  # generous: two shared cores under load


def wait_until(predicate: Callable[[], bool]) -> None:
    _wait_until(predicate, timeout=DEADLINE_S, step=0.02)


@pytest.fixture
def start_cache(redis_url: str) -> Iterator[Callable[..., CacheServer]]:
    """Cache services on port 0 against the test's Redis; every one stopped at teardown."""
    servers: list[CacheServer] = []

    def start(keys: Path | None) -> CacheServer:
        config = CacheConfig(
            host="127.0.0.1",
            port=0,
            metrics_port=-1,
            redis_url=redis_url,
            refresh_seconds=0.5,
            signing_keys=None if keys is None else str(keys),
        )
        server = build(config)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop(0)


def plan_version(server: CacheServer) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = cache_pb2_grpc.CacheServiceStub(channel)
        try:
            return stub.GetPlan(cache_pb2.PlanRequest(model=MODEL), timeout=10).bundle_version
        except grpc.RpcError:
            return 0


def lookup_version(server: CacheServer) -> int:
    """The bundle version a real lookup is answered with."""
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    stream = Stream(channel)
    try:
        x = np.random.default_rng(0).normal(size=(1, 16)).astype(np.float32)
        reply = stream.ask(lookup_request(1, "layer1.2", x, request_id="r1"))
        assert not reply.error and len(reply.hit) == 1
        return reply.bundle_version
    finally:
        stream.close()
        channel.close()


def refused(server: CacheServer, reason: str) -> float:
    return sample(server.metrics, "gati_cache_bundles_refused_total", model=MODEL, reason=reason)


@pytest.fixture
def trainer(redis_url: str, signing_keys: Path) -> Iterator[Publisher]:
    """The trainer's Redis side, with the trainer's key."""
    store = BundleStore(redis_url, keyring=Keyring.load(signing_keys))
    publisher = Publisher(store, MODEL, FINGERPRINT, TrainerMetrics())
    yield publisher
    publisher.close()


def publish_with(redis_url: str, keys: Path | None, bundle: Bundle) -> int:
    store = BundleStore(redis_url, keyring=None if keys is None else Keyring.load(keys))
    try:
        return store.publish(bundle, MODEL)
    finally:
        store.close()


# --- the cache service ----------------------------------------------------------------------
def test_the_trainers_signed_bundle_is_served_and_forged_ones_refused(
    trainer: Publisher, start_cache, redis_url: str, signing_keys: Path, wrong_keys: Path
) -> None:
    assert trainer.publish(make_bundle(seed=1)) == 1
    server = start_cache(signing_keys)
    assert server.probes.version(MODEL) == 1  # loaded before SERVING
    assert plan_version(server) == 1 and lookup_version(server) == 1

    # a forger's secret under the trainer's key id
    assert publish_with(redis_url, wrong_keys, make_bundle(seed=2)) == 2
    wait_until(lambda: refused(server, "signature") == 1)
    assert plan_version(server) == 1 and lookup_version(server) == 1

    # no signature at all, as `gati probes publish` without keys writes
    assert publish_with(redis_url, None, make_bundle(seed=3)) == 3
    wait_until(lambda: refused(server, "signature") == 2)
    assert plan_version(server) == 1 and lookup_version(server) == 1
    server.refresher.sync_once()  # a refused pointer is not fetched, nor counted, again
    assert refused(server, "signature") == 2
    assert server.metrics.total(server.metrics.refused) == 2  # no other reason came up
    assert sample(server.metrics, "gati_cache_bundle_version", model=MODEL) == 1

    # the trainer's next bundle is taken again
    assert trainer.publish(make_bundle(seed=4)) == 4
    wait_until(lambda: plan_version(server) == 4)
    assert lookup_version(server) == 4


def test_a_fresh_cache_behind_a_forged_pointer_serves_the_signed_one_below(
    trainer: Publisher, start_cache, redis_url: str, signing_keys: Path, wrong_keys: Path
) -> None:
    assert trainer.publish(make_bundle(seed=1)) == 1
    assert publish_with(redis_url, wrong_keys, make_bundle(seed=2)) == 2
    server = start_cache(signing_keys)
    assert server.probes.version(MODEL) == 1
    assert refused(server, "signature") == 1
    assert plan_version(server) == 1


def test_signing_off_serves_unsigned_and_sealed_bundles(
    start_cache, redis_url: str, signing_keys: Path
) -> None:
    assert publish_with(redis_url, None, make_bundle(seed=1)) == 1
    server = start_cache(None)
    assert plan_version(server) == 1 and lookup_version(server) == 1
    assert publish_with(redis_url, signing_keys, make_bundle(seed=2)) == 2  # sealed
    wait_until(lambda: plan_version(server) == 2)
    assert lookup_version(server) == 2
    assert server.metrics.total(server.metrics.refused) == 0


# --- the trainer's reading side ------------------------------------------------------------
def test_the_trainer_counts_a_forged_current_bundle_as_none(
    trainer: Publisher, redis_url: str, signing_keys: Path, wrong_keys: Path
) -> None:
    assert trainer.publish(make_bundle(seed=1)) == 1
    store = BundleStore(redis_url, keyring=Keyring.load(signing_keys))
    restarted = Publisher(store, MODEL, FINGERPRINT, TrainerMetrics())  # a trainer starting now
    try:
        current = restarted.current()
        assert current is not None and current.version == 1  # its own signature verifies
        assert publish_with(redis_url, wrong_keys, make_bundle(seed=2)) == 2
        assert restarted.current() is None  # neither warm start nor rival
        assert restarted.current_version == 2
        assert publish_with(redis_url, None, make_bundle(seed=3)) == 3
        assert restarted.current() is None and restarted.current_version == 3
    finally:
        restarted.close()


def test_an_unsigned_trainer_reads_a_sealed_bundle(redis_url: str, signing_keys: Path) -> None:
    assert publish_with(redis_url, signing_keys, make_bundle(seed=1)) == 1
    publisher = Publisher(BundleStore(redis_url), MODEL, FINGERPRINT, TrainerMetrics())
    try:
        current = publisher.current()
        assert current is not None and current.version == 1
    finally:
        publisher.close()


# --- gati probes publish --------------------------------------------------------------------
def test_probes_publish_signs_with_the_given_keys(
    redis_url: str, signing_keys: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    for var in ("SIGNING_KEYS", "SIGNING_KEY_ID"):
        monkeypatch.delenv(names.ENV_PREFIX + var, raising=False)
    bundle_dir = make_bundle(seed=1).save(tmp_path / "bundle")
    argv = ["probes", "publish", "--bundle", str(bundle_dir), "--redis-url", redis_url]
    assert gati_main([*argv, "--signing-keys", str(signing_keys)]) == 0
    monkeypatch.setenv(names.ENV_PREFIX + "SIGNING_KEYS", str(signing_keys))
    assert gati_main(argv) == 0  # the environment's keys
    monkeypatch.delenv(names.ENV_PREFIX + "SIGNING_KEYS")
    assert gati_main(argv) == 0  # none: unsigned, as before signing existed
    assert capsys.readouterr().out.split() == ["1", "2", "3"]

    checking = BundleStore(redis_url, keyring=Keyring.load(signing_keys))
    try:
        for version in (1, 2):
            data = checking.fetch(MODEL, version)
            assert data is not None and split_seal(data)[0] == "k1"
            assert Bundle.from_bytes(checking.bundle_bytes(data)).version == version
        unsigned = checking.fetch(MODEL, 3)
        assert unsigned is not None and not unsigned.startswith(SEAL_MAGIC)
        with pytest.raises(SignatureError, match="unsigned"):
            checking.bundle_bytes(unsigned)
    finally:
        checking.close()

    # a key id that is not in the directory is a configuration error (exit 2), nothing written
    bad = gati_main([*argv, "--signing-keys", str(signing_keys), "--signing-key-id", "k9"])
    assert bad == 2
    assert "signing_key_id" in capsys.readouterr().err


# --- gati.signing ---------------------------------------------------------------------------
def key_dir(root: Path, **keys: bytes) -> Path:
    root.mkdir(parents=True)
    for key_id, secret in keys.items():
        (root / key_id).write_bytes(secret)
    return root


OLD, NEW = b"o" * 32, b"n" * 32


def test_rotation_signs_with_the_chosen_key_and_still_verifies_the_old(tmp_path: Path) -> None:
    old = Keyring.load(key_dir(tmp_path / "old", k1=OLD))
    both = key_dir(tmp_path / "both", k1=OLD, k2=NEW)
    with pytest.raises(ConfigError, match="name the one that signs"):
        Keyring.load(both)  # two keys and no signing id: which one is not a guess
    rotated = Keyring.load(both, "k2")
    assert rotated.signing_id == "k2"

    sealed_old = old.seal(b"bundle v1")
    sealed_new = rotated.seal(b"bundle v2")
    assert split_seal(sealed_new)[0] == "k2"
    assert rotated.unseal(sealed_old) == b"bundle v1"  # signed before the rotation
    assert rotated.unseal(sealed_new) == b"bundle v2"
    with pytest.raises(SignatureError, match="unknown key 'k2'"):
        old.unseal(sealed_new)  # a reader not yet given k2

    value = b"record"
    rotated.check_headers(value, old.headers(value))
    assert dict(rotated.headers(value))[KEY_HEADER] == b"k2"
    with pytest.raises(SignatureError, match="unknown key 'k2'"):
        old.check_headers(value, rotated.headers(value))


def test_an_unknown_key_id_a_wrong_secret_and_tampered_bytes_are_refused(tmp_path: Path) -> None:
    ours = Keyring.load(key_dir(tmp_path / "ours", k1=OLD))
    stranger = Keyring.load(key_dir(tmp_path / "stranger", k9=NEW))
    forger = Keyring.load(key_dir(tmp_path / "forger", k1=NEW))
    with pytest.raises(SignatureError, match="unknown key 'k9'"):
        ours.unseal(stranger.seal(b"data"))
    with pytest.raises(SignatureError, match="does not match key 'k1'"):
        ours.unseal(forger.seal(b"data"))
    tampered = bytearray(ours.seal(b"data"))
    tampered[-1] ^= 0x01
    with pytest.raises(SignatureError, match="does not match"):
        ours.unseal(bytes(tampered))
    with pytest.raises(SignatureError, match="unsigned"):
        ours.unseal(b"data")
    with pytest.raises(SignatureError, match="unknown key 'k9'"):
        ours.check_headers(b"v", stranger.headers(b"v"))
    with pytest.raises(SignatureError, match="does not match"):
        ours.check_headers(b"v", forger.headers(b"v"))
    with pytest.raises(SignatureError, match="does not match"):
        ours.check_headers(b"other value", ours.headers(b"v"))
    for missing in (None, [], [(KEY_HEADER, b"k1")], [(MAC_HEADER, b"x" * 32)]):
        with pytest.raises(SignatureError, match="unsigned"):
            ours.check_headers(b"v", missing)


def test_a_truncated_seal_is_refused_with_or_without_keys(tmp_path: Path) -> None:
    ours = Keyring.load(key_dir(tmp_path / "ours", k1=OLD))
    sealed = ours.seal(b"bundle bytes")
    header = len(SEAL_MAGIC) + 1 + len("k1") + 32
    for cut in (len(SEAL_MAGIC), len(SEAL_MAGIC) + 1, len(SEAL_MAGIC) + 3, header - 1):
        for keyring in (ours, None):
            with pytest.raises(SignatureError, match="truncated seal"):
                open_bundle(sealed[:cut], keyring)
    with pytest.raises(SignatureError, match="does not match"):
        open_bundle(sealed[: header + 3], ours)  # the seal whole, the bundle bytes cut
    assert open_bundle(sealed[: header + 3], None) == b"bun"  # unchecked: the bundle's to refuse
    assert open_bundle(sealed, None) == b"bundle bytes"  # signing off: the seal set aside
    assert open_bundle(b"plain", None) == b"plain"


def test_a_mounted_secrets_dot_entries_are_skipped(tmp_path: Path) -> None:
    """The layout kubelet gives a Secret volume: the keys are links through `..data` into a
    timestamped directory; only the links are key files."""
    root = tmp_path / "secret"
    stamped = root / "..2026_01_02_03_04_05.000000001"
    stamped.mkdir(parents=True)
    (stamped / "k1").write_bytes(OLD + b"\n")  # a trailing newline is not part of the key
    (stamped / "k2").write_bytes(NEW)
    os.symlink(stamped.name, root / "..data")
    for key_id in ("k1", "k2"):
        os.symlink(f"..data/{key_id}", root / key_id)
    (root / ".hidden").write_bytes(b"x" * 64)
    keyring = Keyring.load(root, "k1")
    assert sorted(keyring.keys) == ["k1", "k2"]
    assert keyring.keys["k1"] == OLD
    assert "o" * 8 not in repr(keyring) and "k1" in repr(keyring)  # never the secrets


def test_unusable_key_directories_are_config_errors(tmp_path: Path) -> None:
    short = key_dir(tmp_path / "short", k1=b"too-short")
    with pytest.raises(ConfigError, match="fewer than 16"):
        Keyring.load(short)
    with pytest.raises(ConfigError, match="no key files"):
        Keyring.load(key_dir(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="not a directory"):
        Keyring.load(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="not among the keys"):
        Keyring.load(key_dir(tmp_path / "one", k1=OLD), "k2")
    with pytest.raises(ConfigError, match="fewer than 16"):  # a service fails at start
        CacheConfig(signing_keys=str(short))
    with pytest.raises(ConfigError, match="set signing_keys too"):
        CacheConfig(signing_key_id="k1")


def test_an_empty_key_directory_setting_is_unset_not_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_dir(tmp_path / "cwd", k1=OLD)
    monkeypatch.chdir(tmp_path / "cwd")  # a directory that would load as keys
    assert CacheConfig(signing_keys="", signing_key_id="").keyring() is None
