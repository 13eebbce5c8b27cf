"""Activation records: one served batch row, as the trainer learns from it, <-> Kafka bytes.

The inference service writes one `ActivationRecord` (proto `gati.v1`) per served row: the
reduced activation at each recorded cut, what was served, and the base model's answer when
it is known (every miss; a sampled share of hits through shadow completion). The trainer
reads them back. This module is the one place that knows the wire form, so both sides agree.

Activations travel as float16 `[C, G, G]` (a `poolG` reduction, channel-major, exactly what
`gati.probes.serving.reductions.reduce` gives flattened), so a record says its own grid and channel
count. float16 halves the bytes and loses nothing a probe can see (3 significant digits
against activations that are noisy anyway); values beyond float16's range are clipped rather
than turned into inf. An encoded record must stay under `MAX_RECORD_BYTES` (Apache Kafka's
default limit; Tansu has none, so gati enforces it itself): ResNet-56 with all 27 cuts at
pool4 is about 32 KB.

Decoding is data parsing only (protobuf + numpy frombuffer): never pickle.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from google.protobuf.message import DecodeError

from gati.api import cache_pb2, records_pb2
from gati.names import MAX_RECORD_BYTES
from gati.probes.serving.reductions import REDUCTIONS

WIRE_DTYPE = np.dtype("<f2")  # float16, little-endian
F16_MAX = float(np.finfo(np.float16).max)
# dtype name on the wire -> numpy dtype accepted when decoding (float32 from other producers)
DTYPES = {"float16": np.dtype("<f2"), "float32": np.dtype("<f4")}
GRID_REDUCTION = {g: name for name, g in REDUCTIONS.items()}  # 4 -> "pool4"


class RecordError(ValueError):
    """Bytes that are not a valid activation record; the message says what was wrong."""


class RecordTooLarge(RecordError):
    """An encoded record exceeds the size limit (it would be refused by Apache Kafka)."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"encoded record is {size} bytes, over the limit of {limit}")
        self.size = size
        self.limit = limit


@dataclass
class Record:
    """One served row. `activations` maps cut name -> [C, G, G] (float16 as decoded)."""

    model: str
    request_id: str
    row: int
    time: float  # unix seconds when the request was served
    activations: dict[str, np.ndarray] = field(default_factory=dict)
    hit: bool = False
    exit_layer: str = ""
    served_label: int = -1
    bundle_version: int = 0
    base_label: int | None = None  # the base model's answer, when known
    base_scores: np.ndarray | None = None  # [classes] float32 logits, when known
    shadow: bool = False  # base answer from a shadow completion of a hit
    lookup_rtt_ms: float = 0.0  # measured lookup round trip on this request (0: none)

    @property
    def labelled(self) -> bool:
        return self.base_label is not None

    @property
    def key(self) -> tuple[str, int]:
        """Identity for de-duplication (Kafka delivery is at least once)."""
        return (self.request_id, self.row)

    def reduction(self, layer: str) -> str:
        return GRID_REDUCTION[self.activations[layer].shape[-1]]

    def flat(self, layer: str) -> np.ndarray:
        """[C*G*G] float32: the layer's activation as a probe of its reduction reads it."""
        return self.activations[layer].reshape(-1).astype(np.float32)


def to_wire(reduced: np.ndarray, channels: int) -> np.ndarray:
    """A reduced activation [C*G*G] (any float dtype) -> [C, G, G] float16, clipped to range."""
    x = np.asarray(reduced, dtype=np.float32).reshape(-1)
    g2, rest = divmod(x.size, channels) if channels > 0 else (0, 1)
    g = round(g2**0.5)
    if rest or g * g != g2 or g not in GRID_REDUCTION:
        raise RecordError(
            f"{x.size} values are not C*G*G for C={channels} and a grid in {sorted(GRID_REDUCTION)}"
        )
    return np.clip(x, -F16_MAX, F16_MAX).astype(WIRE_DTYPE).reshape(channels, g, g)


def to_proto(rec: Record) -> records_pb2.ActivationRecord:
    msg = records_pb2.ActivationRecord(
        request_id=rec.request_id,
        model=rec.model,
        time=rec.time,
        hit=rec.hit,
        exit_layer=rec.exit_layer,
        served_label=rec.served_label,
        bundle_version=rec.bundle_version,
        shadow=rec.shadow,
        lookup_rtt_ms=rec.lookup_rtt_ms,
        row=rec.row,
    )
    for layer, act in rec.activations.items():
        a = np.ascontiguousarray(act, dtype=WIRE_DTYPE)
        msg.activations.append(
            records_pb2.LayerActivation(
                layer=layer,
                activation=cache_pb2.Tensor(dtype="float16", shape=a.shape, data=a.tobytes()),
            )
        )
    if rec.base_label is not None:
        msg.has_base = True
        msg.base_label = int(rec.base_label)
        if rec.base_scores is not None:
            msg.base_scores.extend(np.asarray(rec.base_scores, dtype=np.float32).tolist())
    return msg


def encode(rec: Record, limit: int = MAX_RECORD_BYTES) -> bytes:
    """Wire bytes of a record; RecordTooLarge when they exceed `limit`."""
    data = to_proto(rec).SerializeToString()
    if len(data) > limit:
        raise RecordTooLarge(len(data), limit)
    return data


def _tensor(layer: str, t: cache_pb2.Tensor) -> np.ndarray:
    dtype = DTYPES.get(t.dtype)
    if dtype is None:
        raise RecordError(f"layer {layer!r}: dtype {t.dtype!r} not accepted; valid: {list(DTYPES)}")
    shape = tuple(int(s) for s in t.shape)
    if len(shape) != 3 or shape[1] != shape[2] or shape[2] not in GRID_REDUCTION or shape[0] < 1:
        raise RecordError(
            f"layer {layer!r}: shape {list(shape)} is not [C, G, G] with G in "
            f"{sorted(GRID_REDUCTION)}"
        )
    count = shape[0] * shape[1] * shape[2]
    if len(t.data) != count * dtype.itemsize:
        raise RecordError(
            f"layer {layer!r}: {len(t.data)} bytes, expected {count * dtype.itemsize} for "
            f"{t.dtype}{list(shape)}"
        )
    a = np.frombuffer(t.data, dtype=dtype).reshape(shape)
    if not np.isfinite(a).all():
        raise RecordError(f"layer {layer!r}: NaN or infinite values")
    return a


def decode(data: bytes, limit: int = MAX_RECORD_BYTES) -> Record:
    """Parse and check wire bytes; RecordError on anything malformed."""
    if len(data) > limit:
        raise RecordTooLarge(len(data), limit)
    msg = records_pb2.ActivationRecord()
    try:
        msg.ParseFromString(data)
    except DecodeError as exc:
        raise RecordError(f"not an ActivationRecord: {exc}") from None
    if not msg.model or not msg.request_id:
        raise RecordError("record lacks model or request_id")
    acts: dict[str, np.ndarray] = {}
    for la in msg.activations:
        if la.layer in acts:
            raise RecordError(f"layer {la.layer!r} appears twice")
        acts[la.layer] = _tensor(la.layer, la.activation)
    base_scores = None
    if msg.has_base and len(msg.base_scores):
        base_scores = np.asarray(msg.base_scores, dtype=np.float32)
        if not np.isfinite(base_scores).all():
            raise RecordError("base_scores hold NaN or infinite values")
    return Record(
        model=msg.model,
        request_id=msg.request_id,
        row=int(msg.row),
        time=float(msg.time),
        activations=acts,
        hit=bool(msg.hit),
        exit_layer=msg.exit_layer,
        served_label=int(msg.served_label),
        bundle_version=int(msg.bundle_version),
        base_label=int(msg.base_label) if msg.has_base else None,
        base_scores=base_scores,
        shadow=bool(msg.shadow),
        lookup_rtt_ms=float(msg.lookup_rtt_ms),
    )


def stack(records: Sequence[Record], layer: str) -> np.ndarray:
    """[N, C*G*G] float32 of one layer over records that all carry it (same reduction)."""
    if not records:
        raise ValueError("no records to stack")
    shapes = {r.activations[layer].shape for r in records}
    if len(shapes) != 1:
        raise ValueError(f"layer {layer!r} has mixed shapes across records: {sorted(shapes)}")
    out = np.stack([r.activations[layer].reshape(-1) for r in records])  # [N, C*G*G] f16
    return out.astype(np.float32)


def common_layers(records: Sequence[Record]) -> list[str]:
    """Layers every record carries with one shape, in the first record's order."""
    if not records:
        return []
    first = records[0].activations
    return [
        name
        for name, a in first.items()
        if all(name in r.activations and r.activations[name].shape == a.shape for r in records)
    ]
