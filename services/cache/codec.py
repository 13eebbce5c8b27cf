"""gati.v1 messages <-> the cache data plane's types (no logic beyond checking the wire form).

Decoding checks everything about the tensor that can be checked without a bundle (dtype,
rank, byte length, row ids, finite values) before any byte is interpreted; what depends on the
bundle (layer, width) is checked by the engine against the runtime it evaluates with.
"""

from __future__ import annotations

import math

import numpy as np

from gati import names
from gati.api import cache_pb2
from gati.probes.serving.runtime import ProbeRuntime
from services.cache.lookups import Lookup, LookupRejected, Summary

DTYPES = {"float32": np.dtype(np.float32), "float16": np.dtype(np.float16)}


def decode_lookup(request: cache_pb2.LookupRequest, arrived: float) -> Lookup:
    """LookupRequest -> Lookup with x [rows, D] float32; LookupRejected says what is wrong."""
    if len(request.request_id.encode()) > names.MAX_REQUEST_ID_BYTES:  # checked before it is stored
        raise LookupRejected(
            "request_id", f"request_id is longer than {names.MAX_REQUEST_ID_BYTES} bytes (UTF-8)"
        )
    tensor = request.activation
    dtype = DTYPES.get(tensor.dtype)
    if dtype is None:
        raise LookupRejected(
            "dtype",
            f"activation dtype {tensor.dtype!r} is not supported; send one of {list(DTYPES)}",
        )
    shape = tuple(tensor.shape)
    if len(shape) != 2 or shape[0] < 1 or shape[1] < 1:
        raise LookupRejected(
            "shape", f"activation must be [rows >= 1, D >= 1], got shape {list(shape)}"
        )
    expected = math.prod(shape) * dtype.itemsize
    if len(tensor.data) != expected:
        raise LookupRejected(
            "shape",
            f"activation {tensor.dtype}{list(shape)} needs {expected} bytes, "
            f"got {len(tensor.data)}",
        )
    rows = list(request.rows) or list(range(shape[0]))
    if len(rows) != shape[0]:
        raise LookupRejected(
            "shape", f"{len(rows)} row ids for an activation of {shape[0]} rows; send one per row"
        )
    x = np.frombuffer(tensor.data, dtype=dtype).reshape(shape)  # [rows, D], read-only view
    if dtype != DTYPES["float32"]:
        x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise LookupRejected("nonfinite", "activation holds NaN or infinite values")
    return Lookup(request.model, request.layer, request.request_id, x, rows, arrived)


def encode_reply(request: cache_pb2.LookupRequest, item: Lookup) -> cache_pb2.LookupReply:
    return cache_pb2.LookupReply(
        seq=request.seq,
        request_id=request.request_id,
        layer=request.layer,
        hit=item.hit.tolist(),
        label=item.label.tolist(),
        confidence=item.confidence.tolist(),
        bundle_version=item.version,
        error=item.error,
    )


def error_reply(
    request: cache_pb2.LookupRequest, message: str, version: int
) -> cache_pb2.LookupReply:
    return cache_pb2.LookupReply(
        seq=request.seq,
        request_id=request.request_id,
        layer=request.layer,
        bundle_version=version,
        error=message,
    )


def encode_plan(model: str, runtime: ProbeRuntime, live: bool) -> cache_pb2.Plan:
    """`live`: this service keeps a live memory, so active rules want labels."""
    return cache_pb2.Plan(
        model=model,
        bundle_version=runtime.version,
        model_fingerprint=runtime.model_fingerprint,
        layers=[
            cache_pb2.LayerPlan(layer=lay, reduction=red, input_dim=runtime.input_dim(lay))
            for lay, red in runtime.layers
        ],
        live_labels=live and runtime.live_active,
    )


def encode_status(summary: Summary) -> cache_pb2.StatusReply:
    return cache_pb2.StatusReply(
        models=[
            cache_pb2.ModelStatus(
                model=m.model,
                bundle_version=m.version,
                active_layers=m.layers,
                lookups=m.lookups,
                hits=m.hits,
            )
            for m in summary.models
        ],
        bundles_refused=summary.bundles_refused,
        reloads=summary.reloads,
    )
