"""Hostile probe bundles published into Redis: refused, nothing runs, the last good one stays.

A bundle read from the network is data, not code (nothing is unpickled). Each case below is
planted behind the model's pointer and announced, as a publisher with write access to Redis
could; the cache service must refuse it (counted in `gati_cache_bundles_refused`, logged), keep
serving the good version, stay healthy, and never run the payload: the pickles open a marker
file when unpickled (checked to work in this process first), the manifest case names code where
a probe variant belongs, and the rest attack the parsers (safetensors header, JSON nesting).
"""

from __future__ import annotations

import io
import json
import pickle
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
import torch
from safetensors.numpy import save

from gati import names
from gati.probes.fitting.synthetic import random_bundle
from gati.probes.serving.bundle import MAGIC, Bundle, BundleError, compute_checksum
from gati.store import Announcement
from tests.reliability.load import wait_until
from tests.reliability.rig import LAYERS, MODEL, Rig


class Payload:
    """Unpickling this opens (creates) `marker`: what a loader that trusts pickle would do."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _framed(manifest: bytes) -> bytes:
    """The bundle wire form up to the tensors: magic, u64 manifest length, manifest."""
    return MAGIC + struct.pack("<Q", len(manifest)) + manifest


def _manifest_bytes(manifest: dict) -> bytes:
    return _framed(json.dumps(manifest, sort_keys=True).encode())


def _good(rig: Rig, version: int) -> tuple[dict, dict]:
    """Manifest and tensors of a valid bundle stored as `version`."""
    bundle = random_bundle(LAYERS, model_id=MODEL, fingerprint=rig.fingerprint, threshold=0.0)
    bundle = bundle.with_version(version)
    return dict(bundle.manifest), dict(bundle.tensors)


def pickle_alone(rig: Rig, version: int, marker: str) -> bytes:
    return pickle.dumps(Payload(marker))


def pickle_as_tensors(rig: Rig, version: int, marker: str) -> bytes:
    manifest, _ = _good(rig, version)
    return _manifest_bytes(manifest) + pickle.dumps(Payload(marker))


def torch_checkpoint(rig: Rig, version: int, marker: str) -> bytes:
    buf = io.BytesIO()
    torch.save({"probes": Payload(marker)}, buf)  # a zip holding data.pkl
    return buf.getvalue()


def code_in_manifest(rig: Rig, version: int, marker: str) -> bytes:
    """A well-formed, correctly sealed bundle whose variant name is Python code."""
    manifest, tensors = _good(rig, version)
    manifest["layers"][0]["variant"] = f"__import__('pathlib').Path({marker!r}).touch()"
    manifest["checksum"] = compute_checksum(manifest, tensors)
    return _manifest_bytes(manifest) + save(tensors)


def safetensors_huge_header(rig: Rig, version: int, marker: str) -> bytes:
    manifest, _ = _good(rig, version)
    return _manifest_bytes(manifest) + struct.pack("<Q", 2**62) + b"{}"


def safetensors_offsets_outside(rig: Rig, version: int, marker: str) -> bytes:
    manifest, _ = _good(rig, version)
    header = json.dumps(
        {"layer1.1/w": {"dtype": "F32", "shape": [1 << 20], "data_offsets": [0, 4 << 20]}}
    ).encode()
    return _manifest_bytes(manifest) + struct.pack("<Q", len(header)) + header + bytes(8)


NESTING_BOMB = b'{"format": "gati-probe-bundle", "x": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"


def json_nesting_bomb(rig: Rig, version: int, marker: str) -> bytes:
    return _framed(NESTING_BOMB)


CASES: dict[str, Callable[[Rig, int, str], bytes]] = {
    f.__name__: f
    for f in (
        pickle_alone,
        pickle_as_tensors,
        torch_checkpoint,
        code_in_manifest,
        safetensors_huge_header,
        safetensors_offsets_outside,
        json_nesting_bomb,
    )
}


def next_version(redis_url: str) -> int:
    """The version after every stored one (what a publisher would be handed next)."""
    r = redis.Redis.from_url(redis_url)
    try:
        top = r.zrevrange(names.bundle_versions_key(MODEL), 0, 0, withscores=True)
        return int(top[0][1]) + 1 if top else 1
    finally:
        r.close()


def plant(redis_url: str, version: int, data: bytes) -> None:
    """Store `data` as `version` of the model, point at it and announce it."""
    r = redis.Redis.from_url(redis_url)
    try:
        r.set(names.bundle_key(MODEL, version), data)
        r.zadd(names.bundle_versions_key(MODEL), {str(version): version})
        r.sadd(names.BUNDLE_MODELS_KEY, MODEL)
        r.set(names.bundle_pointer_key(MODEL), version)
        r.publish(names.BUNDLE_CHANNEL, Announcement(MODEL, version).to_json())
    finally:
        r.close()


@pytest.fixture(scope="module")
def good(rig: Rig) -> Iterator[int]:
    """A good bundle in use before the hostile ones; a new good one after (pointer moves on)."""
    version = rig.publish(seed=31)
    rig.wait_version(version)
    yield version
    rig.wait_version(rig.publish(seed=32))


def test_a_nesting_bomb_is_a_bundle_error() -> None:
    with pytest.raises(BundleError):
        Bundle.from_bytes(_framed(NESTING_BOMB))


def test_the_payload_is_live(tmp_path: Path) -> None:
    """The pickles do run code when unpickled, so their refusal below means something."""
    marker = tmp_path / "control"
    pickle.loads(pickle.dumps(Payload(str(marker)))).close()
    assert marker.exists()


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_bundle_is_refused(rig: Rig, good: int, tmp_path: Path, case: str) -> None:
    marker = tmp_path / "marker"
    refused = rig.metrics("cache").by("gati_cache_bundles_refused_total", "reason")
    version = next_version(rig.stack.redis_url)
    plant(rig.stack.redis_url, version, CASES[case](rig, version, str(marker)))

    def refused_now() -> dict[str, float]:
        now = rig.metrics("cache").by("gati_cache_bundles_refused_total", "reason")
        return {k: v - refused.get(k, 0) for k, v in now.items() if v > refused.get(k, 0)}

    wait_until(lambda: bool(refused_now()), 10, f"v{version} ({case}) refused")
    reasons = refused_now()
    rig.figures.bundles_refused.update({k: int(v) for k, v in reasons.items()})
    assert f"refused bundle v{version} of model {MODEL}" in rig.proc("cache").log_tail(200)
    assert rig.plan()[0] == good  # the last good bundle stays in use
    assert rig.ask(caches=True).parameters[names.PARAM_BUNDLE_VERSION].int64_param == good
    assert rig.healthy("cache")
    assert not marker.exists(), f"{case}: the payload ran"
