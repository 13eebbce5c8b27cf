"""The REST binding's wire format <-> the data plane's InferCall and InferReply.

KServe v2 JSON tensors, and Triton's binary tensor data extension (what tritonclient.http
sends by default): the body is a JSON header of `Inference-Header-Content-Length` bytes,
then the raw bytes of each input whose parameters name a `binary_data_size`, in order.
Outputs go back the same way when the request asks (`binary_data` per output, or
`binary_data_output` for all). Only the envelope is checked here; the tensors themselves are
checked by gati.tensors, as for gRPC.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np

from gati import names
from gati.errors import InvalidArgument
from gati.tensors import DATATYPES, encode
from services.inference.dataplane import InferCall, InferReply, InputTensor

HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_SIZE = "binary_data_size"
JSON_KINDS = {"b": "b", "i": "iu", "u": "iu", "f": "iuf"}  # numpy kind -> JSON kinds accepted


@dataclass(frozen=True)
class RestRequest:
    call: InferCall
    binary_default: bool = False  # request parameter binary_data_output
    binary: Mapping[str, bool] = field(default_factory=dict)  # per output: binary_data

    def binary_for(self, output: str) -> bool:
        return self.binary.get(output, self.binary_default)


def parse_request(body: bytes, header_length: str | None) -> RestRequest:
    header, tail = _split(body, header_length)
    try:
        doc = json.loads(header)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # RecursionError: nesting
        raise InvalidArgument(f"request body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidArgument("request body must be a JSON object")
    request_id = doc.get("id", "")
    if not isinstance(request_id, str):
        raise InvalidArgument("'id' must be a string")
    params = _object(doc, "parameters", "request")
    caches = _bool(params, names.PARAM_CACHES, True)
    binary_default = _bool(params, "binary_data_output", False)
    inputs, used = _inputs(doc, tail)
    if used != len(tail):
        raise InvalidArgument(f"{len(tail) - used} bytes of binary data that no input claims")
    outputs, binary = _outputs(doc)
    return RestRequest(InferCall(inputs, outputs, caches, request_id), binary_default, binary)


def encode_reply(reply: InferReply, request: RestRequest) -> tuple[bytes, dict[str, str]]:
    """Body and headers of a successful inference response."""
    doc: dict[str, Any] = {"model_name": reply.model, "model_version": reply.version}
    if reply.request_id:
        doc["id"] = reply.request_id
    doc["parameters"] = reply.parameters()
    doc["outputs"] = []
    chunks = []
    for name, datatype, array in reply.outputs:
        out: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if request.binary_for(name):
            raw = encode(array)
            out["parameters"] = {BINARY_SIZE: len(raw)}
            chunks.append(raw)
        else:
            out["data"] = array.reshape(-1).tolist()
        doc["outputs"].append(out)
    header = json.dumps(doc, separators=(",", ":")).encode()
    if not chunks:
        return header, {"Content-Type": "application/json"}
    headers = {HEADER_LENGTH: str(len(header)), "Content-Type": "application/octet-stream"}
    return b"".join([header, *chunks]), headers


def _split(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    if header_length is None:
        return body, memoryview(b"")
    try:
        n = int(header_length)
    except ValueError:
        raise InvalidArgument(f"{HEADER_LENGTH} {header_length!r} is not an integer") from None
    if not 0 <= n <= len(body):
        raise InvalidArgument(f"{HEADER_LENGTH} {n} is outside the {len(body)}-byte body")
    view = memoryview(body)
    return bytes(view[:n]), view[n:]


def _inputs(doc: dict[str, Any], tail: memoryview) -> tuple[list[InputTensor], int]:
    items = doc.get("inputs")
    if not isinstance(items, list):
        raise InvalidArgument("'inputs' must be a list of tensors")
    inputs, offset = [], 0
    for item in items:
        if not isinstance(item, dict):
            raise InvalidArgument("each input must be a JSON object")
        name = _string(item, "name", "input")
        datatype = _string(item, "datatype", f"input '{name}'")
        shape = item.get("shape")
        if not isinstance(shape, list) or not all(_is_int(d) for d in shape):
            raise InvalidArgument(f"input '{name}': 'shape' must be a list of integers")
        size = _object(item, "parameters", f"input '{name}'").get(BINARY_SIZE)
        if size is None:
            typed = _json_values(name, datatype, item["data"]) if "data" in item else None
            inputs.append(InputTensor(name, datatype, shape, typed=typed))
            continue
        if not _is_int(size) or size < 0:
            raise InvalidArgument(f"input '{name}': {BINARY_SIZE} must be a non-negative integer")
        if "data" in item:
            raise InvalidArgument(f"input '{name}': both 'data' and {BINARY_SIZE} are set")
        if offset + size > len(tail):
            raise InvalidArgument(
                f"input '{name}': {BINARY_SIZE} {size} runs past the end of the request "
                f"({len(tail) - offset} bytes of binary data left)"
            )
        inputs.append(InputTensor(name, datatype, shape, raw=tail[offset : offset + size]))
        offset += size
    return inputs, offset


def _json_values(name: str, datatype: str, data: object) -> SimpleNamespace:
    """JSON `data` (flat or nested, row-major) as the typed contents gati.tensors reads: the
    datatype's InferTensorContents field."""
    if datatype not in DATATYPES:
        return SimpleNamespace()  # gati.tensors refuses the datatype before reading values
    try:
        values = np.asarray(data).reshape(-1)
    except (ValueError, OverflowError):
        raise InvalidArgument(f"input '{name}': 'data' is not a rectangular array") from None
    dtype, contents_field = DATATYPES[datatype]
    if values.size and values.dtype.kind not in JSON_KINDS.get(dtype.kind, ""):
        raise InvalidArgument(f"input '{name}': 'data' holds values that are not {datatype}")
    return SimpleNamespace(**{contents_field: values})


def _outputs(doc: dict[str, Any]) -> tuple[list[str], dict[str, bool]]:
    items = doc.get("outputs", [])
    if not isinstance(items, list):
        raise InvalidArgument("'outputs' must be a list")
    wanted, binary = [], {}
    for item in items:
        if not isinstance(item, dict):
            raise InvalidArgument("each requested output must be a JSON object")
        name = _string(item, "name", "output")
        params = _object(item, "parameters", f"output '{name}'")
        if params.get("classification"):
            raise InvalidArgument(f"output '{name}': the classification extension is not served")
        if "binary_data" in params:
            binary[name] = _bool(params, "binary_data", False)
        wanted.append(name)
    return wanted, binary


def _object(doc: dict[str, Any], key: str, what: str) -> dict[str, Any]:
    value = doc.get(key, {})
    if not isinstance(value, dict):
        raise InvalidArgument(f"{what} '{key}' must be a JSON object")
    return value


def _string(doc: dict[str, Any], key: str, what: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str):
        raise InvalidArgument(f"{what}: '{key}' must be a string")
    return value


def _bool(params: dict[str, Any], key: str, default: bool) -> bool:
    value = params.get(key, default)
    if not isinstance(value, bool):
        raise InvalidArgument(f"parameter '{key}' must be a bool")
    return value


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
