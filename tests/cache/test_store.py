"""BundleStore against a real Redis: versions, pointer, announcements, rollback, the CLI."""

from __future__ import annotations

import json
import time

import pytest
import redis

from cli.main import main as gati_main
from gati import names
from gati.errors import InvalidArgument
from gati.probes.serving.bundle import Bundle
from gati.store import Announcement, BundleStore, StoreError
from tests.cache.helpers import MODEL, make_bundle


def next_announcement(pubsub: redis.client.PubSub, timeout: float = 2.0) -> Announcement:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.1)
        if message is not None and message["type"] == "message":
            announced = Announcement.parse(message["data"])
            assert announced is not None
            return announced
    raise AssertionError("no announcement")


def test_publish_assigns_versions_moves_pointer_and_announces(store: BundleStore) -> None:
    pubsub = store.subscribe()
    bundle = make_bundle()
    assert store.current(MODEL) is None and store.pointer(MODEL) is None
    assert [store.publish(bundle) for _ in range(3)] == [1, 2, 3]
    assert [next_announcement(pubsub) for _ in range(3)] == [
        Announcement(MODEL, v) for v in (1, 2, 3)
    ]
    assert store.versions(MODEL) == [1, 2, 3]
    assert store.models() == [MODEL]
    version, data = store.current(MODEL)  # type: ignore[misc]
    assert version == 3
    stored = Bundle.from_bytes(data)
    assert stored.version == 3  # the bytes carry the version they are stored under
    assert stored.tensors.keys() == bundle.tensors.keys()
    assert Bundle.from_bytes(store.fetch(MODEL, 1)).version == 1  # type: ignore[arg-type]
    pubsub.close()


def test_publish_under_another_name_and_bad_names(store: BundleStore) -> None:
    assert store.publish(make_bundle(), model="resnet20-b") == 1
    assert store.models() == ["resnet20-b"]
    assert store.pointer(MODEL) is None
    with pytest.raises(InvalidArgument, match="not usable in Redis keys"):
        store.publish(make_bundle(), model="a:b")


def test_version_counter_never_reuses_a_published_version(store: BundleStore) -> None:
    store.publish(make_bundle())
    store.publish(make_bundle())
    store.client.delete(names.bundle_counter_key(MODEL))  # e.g. a partial restore
    assert store.publish(make_bundle()) == 3


def test_rollback_moves_pointer_down_and_announces(store: BundleStore) -> None:
    for _ in range(3):
        store.publish(make_bundle())
    pubsub = store.subscribe()
    store.rollback(MODEL, 1)
    assert next_announcement(pubsub) == Announcement(MODEL, 1)
    assert store.pointer(MODEL) == 1
    assert store.current(MODEL)[0] == 1  # type: ignore[index]
    assert store.publish(make_bundle()) == 4  # a publish after a rollback moves forward again
    assert store.pointer(MODEL) == 4
    pubsub.close()


def test_rollback_to_a_missing_version_says_what_exists(store: BundleStore) -> None:
    store.publish(make_bundle())
    store.publish(make_bundle())
    missing = r"no bundle version 7 in Redis \(published versions: 1, 2\)"
    with pytest.raises(StoreError, match=missing):
        store.rollback(MODEL, 7)
    with pytest.raises(StoreError, match="published versions: none"):
        store.rollback("other", 1)
    assert store.pointer(MODEL) == 2


def test_announcement_parse_rejects_junk() -> None:
    assert Announcement.parse(b'{"model": "m", "version": 3}') == Announcement("m", 3)
    junks = (b"", b"[]", b"{}", b'{"model": 1, "version": 2}', b'{"model": "m", "version": true}')
    for junk in junks:
        assert Announcement.parse(junk) is None
    assert json.loads(Announcement("m", 2).to_json()) == {"model": "m", "version": 2}


def test_cli_publish_and_rollback(redis_url: str, store: BundleStore, tmp_path, capsys) -> None:
    bundle_dir = make_bundle().save(tmp_path / "bundle")
    assert (
        gati_main(["probes", "publish", "--bundle", str(bundle_dir), "--redis-url", redis_url]) == 0
    )
    assert capsys.readouterr().out.strip() == "1"
    argv = [
        "probes",
        "publish",
        "--bundle",
        str(bundle_dir),
        "--redis-url",
        redis_url,
        "--model",
        "m2",
    ]
    assert gati_main(argv) == 0
    assert capsys.readouterr().out.strip() == "1"
    assert (
        gati_main(["probes", "publish", "--bundle", str(bundle_dir), "--redis-url", redis_url]) == 0
    )
    assert capsys.readouterr().out.strip() == "2"
    assert store.models() == ["m2", MODEL]

    assert (
        gati_main(
            [
                "probes",
                "rollback",
                "--bundle-version",
                "1",
                "--model",
                MODEL,
                "--redis-url",
                redis_url,
            ]
        )
        == 0
    )
    assert store.pointer(MODEL) == 1
    assert (
        gati_main(
            [
                "probes",
                "rollback",
                "--bundle-version",
                "9",
                "--model",
                MODEL,
                "--redis-url",
                redis_url,
            ]
        )
        == 2
    )
    assert "no bundle version 9" in capsys.readouterr().err


def test_cli_publish_refuses_a_corrupt_bundle(redis_url: str, store: BundleStore, tmp_path, capsys):
    bundle_dir = make_bundle().save(tmp_path / "bundle")
    tensors = bundle_dir / "tensors.safetensors"
    data = bytearray(tensors.read_bytes())
    data[-1] ^= 0xFF  # flip bits in the last tensor value
    tensors.write_bytes(bytes(data))
    assert (
        gati_main(["probes", "publish", "--bundle", str(bundle_dir), "--redis-url", redis_url]) == 2
    )
    assert "checksum mismatch" in capsys.readouterr().err
    assert store.models() == []
