"""Small helpers for talking to a real inference service over gRPC in tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import grpc
import numpy as np

from gati import names
from gati.api import grpc_service_pb2 as pb
from gati.api import grpc_service_pb2_grpc as pb_grpc


def infer_request(
    model: str,
    batch: np.ndarray,
    datatype: str = "UINT8",
    caches: bool | None = None,
    outputs: tuple[str, ...] = (),
) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name=names.INPUT_IMAGE, datatype=datatype, shape=list(batch.shape))
    request.raw_input_contents.append(np.ascontiguousarray(batch).tobytes())
    if caches is not None:
        request.parameters[names.PARAM_CACHES].bool_param = caches
    for name in outputs:
        request.outputs.add(name=name)
    return request


def output(response: pb.ModelInferResponse, name: str) -> np.ndarray:
    dtypes = {"FP32": np.float32, "INT64": np.int64, "BOOL": np.bool_, "INT32": np.int32}
    for i, tensor in enumerate(response.outputs):
        if tensor.name == name:
            array = np.frombuffer(response.raw_output_contents[i], dtype=dtypes[tensor.datatype])
            return array.reshape(tuple(tensor.shape))
    raise KeyError(name)


@contextmanager
def inference_stub(port: int) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(
        f"127.0.0.1:{port}",
        options=[
            ("grpc.max_receive_message_length", 64 << 20),
            ("grpc.max_send_message_length", 64 << 20),
        ],
    ) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)
