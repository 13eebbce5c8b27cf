"""gati.records: the activation record wire form (no broker needed)."""

from __future__ import annotations

import numpy as np
import pytest

from gati import records
from gati.api import cache_pb2, records_pb2
from gati.names import MAX_RECORD_BYTES


def _record(labelled: bool = True) -> records.Record:
    rng = np.random.default_rng(0)
    return records.Record(
        model="resnet20",
        request_id="req-1",
        row=3,
        time=1700000000.25,
        activations={
            "layer1.0": records.to_wire(rng.normal(size=16 * 16).astype(np.float32), 16),
            "layer2.0": records.to_wire(rng.normal(size=32 * 16).astype(np.float32), 32),
        },
        hit=not labelled,
        exit_layer="" if labelled else "layer1.0",
        served_label=7,
        bundle_version=12,
        base_label=7 if labelled else None,
        base_scores=np.arange(10, dtype=np.float32) if labelled else None,
        shadow=False,
        lookup_rtt_ms=0.75,
    )


def test_round_trip_is_exact() -> None:
    rec = _record()
    back = records.decode(records.encode(rec))
    assert back.key == ("req-1", 3)
    assert (back.model, back.time, back.hit) == ("resnet20", 1700000000.25, False)
    assert back.served_label == 7
    assert back.bundle_version == 12 and back.base_label == 7 and back.labelled
    assert back.lookup_rtt_ms == 0.75
    np.testing.assert_array_equal(back.base_scores, np.arange(10, dtype=np.float32))
    assert list(back.activations) == ["layer1.0", "layer2.0"]
    for layer, a in rec.activations.items():
        assert back.activations[layer].dtype == np.float16
        assert back.activations[layer].shape == a.shape
        np.testing.assert_array_equal(back.activations[layer], a)
    assert back.reduction("layer2.0") == "pool4"
    assert back.flat("layer2.0").shape == (512,) and back.flat("layer2.0").dtype == np.float32


def test_unlabelled_hit_round_trip() -> None:
    back = records.decode(records.encode(_record(labelled=False)))
    assert back.base_label is None and back.base_scores is None and not back.labelled
    assert back.hit and back.exit_layer == "layer1.0"


def test_to_wire_shapes_grid_and_clips_to_float16() -> None:
    a = records.to_wire(np.array([1e6, -1e6, 0.5, 2.0], np.float32), 1)  # C=1, G=2
    assert a.shape == (1, 2, 2) and a.dtype == np.float16
    assert np.isfinite(a).all() and a.reshape(-1)[0] == np.finfo(np.float16).max
    with pytest.raises(records.RecordError, match="C\\*G\\*G"):
        records.to_wire(np.zeros(24, np.float32), 2)  # 12 per channel: not a square grid


def test_float16_error_is_small_relative_to_activations() -> None:
    x = np.random.default_rng(1).gamma(2.0, 0.5, size=64 * 16).astype(np.float32)
    a = records.to_wire(x, 64).reshape(-1).astype(np.float32)
    assert np.max(np.abs(a - x) / np.maximum(np.abs(x), 1e-3)) < 1e-3


def test_size_limit_enforced_on_encode_and_decode() -> None:
    rec = _record()
    rec.activations["huge"] = records.to_wire(np.zeros(40_000 * 16, np.float32), 40_000)
    with pytest.raises(records.RecordTooLarge) as info:
        records.encode(rec)
    assert info.value.size > MAX_RECORD_BYTES and info.value.limit == MAX_RECORD_BYTES
    data = records.encode(rec, limit=10 * MAX_RECORD_BYTES)
    with pytest.raises(records.RecordTooLarge):
        records.decode(data)


def test_resnet56_all_cuts_pool4_is_about_32_kb() -> None:
    # 9 cuts each at 16, 32, 64 channels, pool4: 16128 float16 values
    acts = {}
    for stage, c in enumerate((16, 32, 64), start=1):
        for i in range(9):
            acts[f"layer{stage}.{i}"] = records.to_wire(np.ones(c * 16, np.float32), c)
    rec = records.Record("m", "r" * 32, 0, 0.0, acts, base_label=1, base_scores=np.zeros(10))
    size = len(records.encode(rec))
    assert 32_256 < size < 34_000


def _raw(**tensor: object) -> bytes:
    msg = records_pb2.ActivationRecord(request_id="r", model="m")
    msg.activations.append(
        records_pb2.LayerActivation(layer="l", activation=cache_pb2.Tensor(**tensor))
    )
    return msg.SerializeToString()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\xff\xff\xff", "not an ActivationRecord"),
        (records_pb2.ActivationRecord(model="m").SerializeToString(), "lacks model or request_id"),
        (_raw(dtype="int8", shape=[1, 1, 1], data=b"\0"), "dtype 'int8' not accepted"),
        (_raw(dtype="float16", shape=[1, 3, 3], data=b"\0" * 18), "is not \\[C, G, G\\]"),
        (_raw(dtype="float16", shape=[2, 1, 1], data=b"\0" * 2), "2 bytes, expected 4"),
        (
            _raw(dtype="float16", shape=[1, 1, 1], data=np.float16(np.nan).tobytes()),
            "NaN or infinite",
        ),
    ],
)
def test_malformed_records_are_refused_with_reasons(raw: bytes, message: str) -> None:
    with pytest.raises(records.RecordError, match=message):
        records.decode(raw)


def test_float32_tensors_from_other_producers_are_accepted() -> None:
    data = np.arange(4, dtype="<f4").tobytes()
    back = records.decode(_raw(dtype="float32", shape=[1, 2, 2], data=data))
    np.testing.assert_array_equal(back.flat("l"), np.arange(4, dtype=np.float32))


def test_stack_and_common_layers() -> None:
    a, b = _record(), _record()
    b.activations.pop("layer2.0")
    assert records.common_layers([a, b]) == ["layer1.0"]
    x = records.stack([a, b], "layer1.0")
    assert x.shape == (2, 256) and x.dtype == np.float32
