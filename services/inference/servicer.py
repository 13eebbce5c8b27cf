"""Open Inference Protocol v2 over gRPC: proto in, the shared data plane, proto out.

No model logic and no validation here (services.inference.dataplane has both, for REST too).
"""

from __future__ import annotations

import json
import logging

import grpc
from google.protobuf import json_format

from gati import names
from gati.api import grpc_service_pb2 as pb
from gati.api import grpc_service_pb2_grpc as pb_grpc
from gati.api import model_config_pb2
from gati.errors import GatiError, InvalidArgument
from gati.tensors import encode
from services.common.status import abort_with, grpc_errors
from services.inference import describe
from services.inference.dataplane import DataPlane, InferCall, InferReply, InputTensor, RequestClock

log = logging.getLogger(__name__)
EXITS_METADATA = "gati-exits"  # trailing metadata of ModelStatistics: rows per exit, JSON


def _bool_param(request: pb.ModelInferRequest, key: str, default: bool) -> bool:
    if key not in request.parameters:
        return default
    param = request.parameters[key]
    if param.WhichOneof("parameter_choice") != "bool_param":
        raise InvalidArgument(f"parameter '{key}' must be a bool")
    return param.bool_param


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane

    def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=self.plane.server_live())

    def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.plane.server_ready())

    def ModelReady(self, request, context):
        return pb.ModelReadyResponse(ready=self.plane.model_ready(request.name, request.version))

    def ServerMetadata(self, request, context):
        return json_format.ParseDict(describe.server_metadata(), pb.ServerMetadataResponse())

    @grpc_errors
    def ModelMetadata(self, request, context):
        meta = self.plane.model_metadata(request.name, request.version)
        return json_format.ParseDict(meta, pb.ModelMetadataResponse())

    @grpc_errors
    def ModelConfig(self, request, context):
        config = self.plane.model_config(request.name, request.version)
        message = json_format.ParseDict(config, model_config_pb2.ModelConfig())
        return pb.ModelConfigResponse(config=message)

    @grpc_errors
    def ModelStatistics(self, request, context):
        report = self.plane.model_statistics(request.name, request.version)
        exits = {m["name"]: m["gati.exits"] for m in report["model_stats"]}
        context.set_trailing_metadata(((EXITS_METADATA, json.dumps(exits)),))
        return json_format.ParseDict(
            report, pb.ModelStatisticsResponse(), ignore_unknown_fields=True
        )

    def ModelInfer(self, request, context):
        try:
            return self._infer(request, context)
        except Exception as exc:
            abort_with(context, exc)

    def ModelStreamInfer(self, request_iterator, context):
        for request in request_iterator:
            yield self._stream_one(request, context)

    def _stream_one(self, request: pb.ModelInferRequest, context) -> pb.ModelStreamInferResponse:
        try:
            return pb.ModelStreamInferResponse(infer_response=self._infer(request, context))
        except Exception as exc:
            if not isinstance(exc, GatiError):
                log.exception("stream request failed")
                return pb.ModelStreamInferResponse(error_message="internal error; see server log")
            return pb.ModelStreamInferResponse(error_message=f"{exc.code}: {exc}")

    # --- translation -------------------------------------------------------------------
    def _infer(self, request: pb.ModelInferRequest, context: grpc.ServicerContext | None):
        return self.plane.infer(
            request.model_name,
            request.model_version,
            lambda: _call(request),
            _response,
            RequestClock(),
            context.time_remaining if context is not None else None,
        )


def _call(request: pb.ModelInferRequest) -> InferCall:
    raw_count = len(request.raw_input_contents)
    if raw_count not in (0, len(request.inputs)):
        raise InvalidArgument(
            f"{raw_count} raw_input_contents for {len(request.inputs)} inputs; send one per input"
        )
    inputs = [
        InputTensor(
            t.name,
            t.datatype,
            t.shape,
            request.raw_input_contents[i] if raw_count else None,
            t.contents if t.HasField("contents") else None,
        )
        for i, t in enumerate(request.inputs)
    ]
    return InferCall(
        inputs,
        [o.name for o in request.outputs],
        _bool_param(request, names.PARAM_CACHES, True),
        request.id,
    )


def _response(reply: InferReply) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(
        model_name=reply.model, model_version=reply.version, id=reply.request_id
    )
    for name, datatype, array in reply.outputs:
        response.outputs.add(name=name, datatype=datatype, shape=list(array.shape))
        response.raw_output_contents.append(encode(array))
    params = response.parameters
    params[names.PARAM_HIT].bool_param = reply.hit
    params[names.PARAM_EXIT_LAYER].string_param = reply.exit_layer
    params[names.PARAM_BUNDLE_VERSION].int64_param = reply.bundle_version
    params[names.PARAM_EXACT_HIT].bool_param = reply.exact_hit
    return response
