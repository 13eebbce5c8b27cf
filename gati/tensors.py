"""Open Inference Protocol tensors <-> numpy: the datatype table and input decoding.

Raw contents are little-endian row-major bytes; typed contents use the `InferTensorContents`
field of the datatype's family. Validation happens before any byte is interpreted, and each
error names the tensor and what was expected.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gati.errors import InvalidArgument

# datatype -> (numpy dtype, InferTensorContents field)
DATATYPES: dict[str, tuple[np.dtype, str]] = {
    "BOOL": (np.dtype(np.bool_), "bool_contents"),
    "UINT8": (np.dtype("<u1"), "uint_contents"),
    "UINT16": (np.dtype("<u2"), "uint_contents"),
    "UINT32": (np.dtype("<u4"), "uint_contents"),
    "UINT64": (np.dtype("<u8"), "uint64_contents"),
    "INT8": (np.dtype("<i1"), "int_contents"),
    "INT16": (np.dtype("<i2"), "int_contents"),
    "INT32": (np.dtype("<i4"), "int_contents"),
    "INT64": (np.dtype("<i8"), "int64_contents"),
    "FP16": (np.dtype("<f2"), "fp32_contents"),
    "FP32": (np.dtype("<f4"), "fp32_contents"),
    "FP64": (np.dtype("<f8"), "fp64_contents"),
}


@dataclass(frozen=True)
class TensorSpec:
    """An accepted input: datatype and per-row shape (the batch dimension is -1)."""

    name: str
    datatype: str
    shape: tuple[int, ...]  # without the batch dimension


def numpy_dtype(datatype: str) -> np.dtype:
    try:
        return DATATYPES[datatype][0]
    except KeyError:
        raise InvalidArgument(f"unsupported datatype {datatype!r}") from None


def decode_input(
    spec: TensorSpec,
    datatype: str,
    shape: Sequence[int],
    raw: bytes | None,
    typed: object | None,
    max_batch: int,
) -> np.ndarray:
    """One input tensor as a numpy array [batch, *spec.shape], checked against `spec`."""
    name = spec.name
    if datatype != spec.datatype:
        raise InvalidArgument(
            f"input '{name}': datatype {datatype or '(empty)'} not accepted, "
            f"expected {spec.datatype}"
        )
    shape = tuple(int(d) for d in shape)
    expected = f"[-1, {', '.join(map(str, spec.shape))}]"
    if len(shape) != len(spec.shape) + 1 or shape[1:] != spec.shape:
        raise InvalidArgument(f"input '{name}': shape {list(shape)} does not match {expected}")
    batch = shape[0]
    if batch <= 0:
        raise InvalidArgument(f"input '{name}': empty batch (shape {list(shape)}), expected >= 1")
    if batch > max_batch:
        raise InvalidArgument(f"input '{name}': batch {batch} exceeds the limit of {max_batch}")
    dtype, field = DATATYPES[spec.datatype]
    count = int(np.prod(shape))
    if raw is not None and typed is not None:
        raise InvalidArgument(
            f"input '{name}': both raw_input_contents and typed contents are set; send one"
        )
    if raw is not None:
        if len(raw) != count * dtype.itemsize:
            raise InvalidArgument(
                f"input '{name}': {len(raw)} bytes of raw contents, expected "
                f"{count * dtype.itemsize} for {spec.datatype} shape {list(shape)}"
            )
        array = np.frombuffer(raw, dtype=dtype).reshape(shape)
    elif typed is not None:
        values = getattr(typed, field)
        if len(values) != count:
            raise InvalidArgument(
                f"input '{name}': {len(values)} values in contents.{field}, expected {count}"
            )
        info = np.iinfo(dtype) if dtype.kind in "iu" else None
        array = np.asarray(values)
        if info is not None and array.size and (array.min() < info.min or array.max() > info.max):
            raise InvalidArgument(
                f"input '{name}': contents.{field} values outside the {spec.datatype} range"
            )
        array = array.astype(dtype).reshape(shape)
    else:
        raise InvalidArgument(f"input '{name}': no contents (raw_input_contents or contents)")
    if dtype.kind == "f" and not np.isfinite(array).all():
        raise InvalidArgument(f"input '{name}': NaN or infinite values are not accepted")
    return array


def encode(array: np.ndarray) -> bytes:
    """Raw little-endian bytes of an output tensor."""
    return np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
