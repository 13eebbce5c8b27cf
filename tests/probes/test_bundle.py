"""Bundle: round trips, and refusal (with a clear message) of anything corrupt or foreign."""

from __future__ import annotations

import copy
import json
import struct

import numpy as np
import pytest
import safetensors.numpy as stnp

from gati.probes.fitting.entries import active_prefix, candidate_prefix, layer_entry
from gati.probes.fitting.synthetic import random_bundle, random_roles
from gati.probes.serving.bundle import (
    MAGIC,
    Bundle,
    BundleError,
    ChecksumError,
    LayerError,
    VersionError,
)

LAYERS = {"layer1.0": ("linear", 16), "layer2.1": ("mlp", 32), "layer3.2": ("conv", 64)}
FP = "ab" * 16


def _bundle(**kw) -> Bundle:
    return random_bundle(LAYERS, fingerprint=FP, selector="logistic", memory_size=40, **kw)


def _split(blob: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", blob[8:16])
    return json.loads(blob[16 : 16 + n]), blob[16 + n :]


def _join(manifest: dict, tensor_bytes: bytes) -> bytes:
    raw = json.dumps(manifest).encode()
    return MAGIC + struct.pack("<Q", len(raw)) + raw + tensor_bytes


def test_bytes_round_trip_is_exact() -> None:
    b = _bundle()
    blob = b.to_bytes()
    assert blob[:8] == MAGIC
    back = Bundle.from_bytes(blob, expected_fingerprint=FP)
    assert back.manifest == b.manifest
    assert sorted(back.tensors) == sorted(b.tensors)
    for name, t in b.tensors.items():
        assert back.tensors[name].dtype == t.dtype
        np.testing.assert_array_equal(back.tensors[name], t)
    assert back.to_bytes() == blob  # serialisation is deterministic
    assert back.plan == [("layer1.0", "pool1"), ("layer2.1", "pool2"), ("layer3.2", "pool4")]
    assert back.tensors["layers/layer1.0/mem_keys"].dtype == np.float16  # memory travels small


def test_directory_round_trip(tmp_path) -> None:
    b = _bundle(version=7)
    b.save(tmp_path / "bundle")
    assert sorted(p.name for p in (tmp_path / "bundle").iterdir()) == [
        "manifest.json",
        "tensors.safetensors",
    ]
    back = Bundle.load(tmp_path / "bundle", expected_fingerprint=FP)
    assert back.version == 7
    assert back.checksum == b.checksum


def test_with_version_reseals() -> None:
    b = _bundle()
    b9 = b.with_version(9)
    assert b9.version == 9 and b.version == 1
    assert b9.checksum != b.checksum
    assert Bundle.from_bytes(b9.to_bytes()).version == 9


def test_empty_plan_is_valid() -> None:
    b = random_bundle({}, fingerprint=FP)
    back = Bundle.from_bytes(b.to_bytes(), expected_fingerprint=FP)
    assert back.plan == [] and back.tensors == {}


def test_bad_checksum_refused() -> None:
    manifest, tensors = _split(_bundle().to_bytes())
    arrays = stnp.load(tensors)
    arrays["layers/layer1.0/w"] = arrays["layers/layer1.0/w"] + 1.0  # flipped weights
    with pytest.raises(BundleError, match="checksum mismatch"):
        Bundle.from_bytes(_join(manifest, stnp.save(arrays)))
    manifest["layers"][0]["threshold"] = 0.01  # or a loosened threshold
    with pytest.raises(BundleError, match="checksum mismatch"):
        Bundle.from_bytes(_join(manifest, tensors))


def test_wrong_fingerprint_refused(tmp_path) -> None:
    b = _bundle()
    with pytest.raises(BundleError, match=r"fingerprint .* refit the probes"):
        Bundle.from_bytes(b.to_bytes(), expected_fingerprint="cd" * 16)
    b.save(tmp_path)
    with pytest.raises(BundleError, match="fingerprint"):
        Bundle.load(tmp_path, expected_fingerprint="cd" * 16)


def test_missing_tensor_refused_even_with_a_valid_checksum() -> None:
    b = _bundle()
    tensors = dict(b.tensors)
    del tensors["layers/layer2.1/w2"]
    resealed = Bundle._sealed(b.manifest, tensors)  # an attacker or a bug recomputed the hash
    with pytest.raises(BundleError, match=r"'layers/layer2.1/w2' .* missing"):
        Bundle.from_bytes(resealed.to_bytes())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.update(layers=5), "'layers' must be a list"),
        (lambda m: m.update(candidates="x"), "'candidates' must be a list"),
        (lambda m: m["layers"][0].update(tensors=[]), "'tensors' must map names to specs"),
        (lambda m: m["layers"][0]["tensors"].update(w=3), "'tensors' must map names to specs"),
    ],
)
def test_type_confused_manifest_is_a_bundle_error(change, message: str) -> None:
    """Found by the reliability fuzz: these raised TypeError/AttributeError, not BundleError."""
    b = _bundle()
    manifest = copy.deepcopy(b.manifest)
    change(manifest)
    with pytest.raises(BundleError, match=message):
        Bundle.from_bytes(Bundle._sealed(manifest, dict(b.tensors)).to_bytes())


def test_the_error_type_names_the_check_that_failed() -> None:
    """The cache service counts refusals by these types, never by their messages' text."""
    b = _bundle()
    manifest, tensors = _split(b.to_bytes())
    manifest["layers"][0]["threshold"] = 0.01
    with pytest.raises(ChecksumError):
        Bundle.from_bytes(_join(manifest, tensors))
    broken = copy.deepcopy(b.manifest)
    broken["layers"][0].update(tensors=[])
    with pytest.raises(LayerError):
        Bundle.from_bytes(Bundle._sealed(broken, dict(b.tensors)).to_bytes())
    with pytest.raises(VersionError):
        b.with_version(-1)


def test_wrong_shape_refused() -> None:
    b = _bundle()
    tensors = dict(b.tensors)
    tensors["layers/layer1.0/w"] = np.zeros((10, 17), np.float32)
    with pytest.raises(
        BundleError, match=r"float32\[10, 17\], manifest declares float32\[10, 16\]"
    ):
        Bundle.from_bytes(Bundle._sealed(b.manifest, tensors).to_bytes())


def test_undeclared_tensor_refused() -> None:
    b = _bundle()
    tensors = {**b.tensors, "stowaway": np.zeros(3, np.float32)}
    with pytest.raises(BundleError, match="not declared"):
        Bundle.from_bytes(Bundle._sealed(b.manifest, tensors).to_bytes())


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"", "not a probe bundle"),
        (b"PK\x03\x04" + b"\0" * 40, "not a probe bundle"),  # a zip (e.g. torch.save) is not one
        (MAGIC + struct.pack("<Q", 10**12) + b"{}", "truncated or corrupt"),
        (MAGIC + struct.pack("<Q", 4) + b"nope", "not valid UTF-8 JSON"),
        (MAGIC + struct.pack("<Q", 2) + b"{}", "lacks required fields"),
    ],
)
def test_garbage_refused(blob: bytes, message: str) -> None:
    with pytest.raises(BundleError, match=message):
        Bundle.from_bytes(blob)


def test_unknown_format_version_refused() -> None:
    manifest, tensors = _split(_bundle().to_bytes())
    manifest["format_version"] = 99
    with pytest.raises(BundleError, match="format_version 99 is not supported"):
        Bundle.from_bytes(_join(manifest, tensors))


def test_bad_tensor_section_refused() -> None:
    manifest, tensors = _split(_bundle().to_bytes())
    with pytest.raises(BundleError, match="not valid safetensors"):
        Bundle.from_bytes(_join(manifest, tensors[: len(tensors) // 2]))


def test_not_a_directory_refused(tmp_path) -> None:
    with pytest.raises(BundleError, match=r"manifest\.json is missing"):
        Bundle.load(tmp_path)


def test_with_thresholds() -> None:
    b = _bundle()
    tight = b.with_thresholds({"layer2.1": 0.97})
    assert [e["threshold"] for e in tight.layers] == [0.5, 0.97, 0.5]
    Bundle.from_bytes(tight.to_bytes())  # still valid
    with pytest.raises(BundleError, match="no active layer"):
        b.with_thresholds({"layer3.8": 0.9})


def test_without_candidates_leaves_a_valid_bundle_with_the_same_plan() -> None:
    rng = np.random.default_rng(0)
    e1, t1 = layer_entry(
        "layer1.0", "linear", 16, random_roles("linear", 16, 10, rng),
        prefix=active_prefix("layer1.0"), threshold=0.5,
    )  # fmt: skip
    e2, t2 = layer_entry(
        "layer1.1", "mlp", 16, random_roles("mlp", 16, 10, rng),
        prefix=candidate_prefix("layer1.1", "mlp"),
    )  # fmt: skip
    b = Bundle.create(
        model_id="m", arch="resnet20", model_fingerprint=FP, layers=[e1],
        tensors={**t1, **t2}, candidates=[e2], version=3,
    )  # fmt: skip
    s = b.without_candidates()
    assert s.candidates == [] and set(s.tensors) == set(t1)
    assert s.version == 3 and s.plan == b.plan == [("layer1.0", "pool1")]
    assert Bundle.from_bytes(s.to_bytes(), expected_fingerprint=FP).checksum == s.checksum
    assert s.without_candidates() is s  # nothing left to strip
