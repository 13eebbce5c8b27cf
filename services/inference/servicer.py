"""Open Inference Protocol v2 servicer: proto in, engine call, proto out. No model logic here."""

from __future__ import annotations

import logging

import grpc
import numpy as np

from gati import __version__, names
from gati.api import grpc_service_pb2 as pb
from gati.api import grpc_service_pb2_grpc as pb_grpc
from gati.errors import DeadlineExceeded, GatiError, InvalidArgument
from gati.tensors import TensorSpec, decode_input, encode
from services.common.status import abort_with, grpc_errors, status_code
from services.inference.engine import Engine, InferResult, ServedModel
from services.inference.metrics import InferenceMetrics

log = logging.getLogger(__name__)

OUTPUTS = {  # name -> (datatype, per-row shape given num_classes)
    names.OUTPUT_SCORES: "FP32",
    names.OUTPUT_LABEL: "INT64",
    names.OUTPUT_HIT: "BOOL",
    names.OUTPUT_EXIT_LAYER: "INT32",
}
DEFAULT_OUTPUTS = (names.OUTPUT_SCORES, names.OUTPUT_LABEL)


def input_spec(served: ServedModel) -> TensorSpec:
    spec = served.model.input_spec
    return TensorSpec(names.INPUT_IMAGE, spec.datatype, spec.shape)


def _bool_param(request: pb.ModelInferRequest, key: str, default: bool) -> bool:
    if key not in request.parameters:
        return default
    param = request.parameters[key]
    if param.WhichOneof("parameter_choice") != "bool_param":
        raise InvalidArgument(f"parameter '{key}' must be a bool")
    return param.bool_param


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, engine: Engine, metrics: InferenceMetrics) -> None:
        self.engine = engine
        self.metrics = metrics

    def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=bool(self.engine.models))

    def ModelReady(self, request, context):
        served = self.engine.models.get(request.name)
        ready = served is not None and request.version in ("", served.version)
        return pb.ModelReadyResponse(ready=ready)

    def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name="gati", version=__version__, extensions=[])

    @grpc_errors
    def ModelMetadata(self, request, context):
        served = self.engine.get(request.name, request.version)
        spec = input_spec(served)
        classes = served.model.num_classes
        shapes = {
            names.OUTPUT_SCORES: [-1, classes],
            names.OUTPUT_LABEL: [-1],
            names.OUTPUT_HIT: [-1],
            names.OUTPUT_EXIT_LAYER: [-1],
        }
        return pb.ModelMetadataResponse(
            name=served.name,
            versions=[served.version],
            platform="pytorch_staged",
            inputs=[
                pb.ModelMetadataResponse.TensorMetadata(
                    name=spec.name, datatype=spec.datatype, shape=[-1, *spec.shape]
                )
            ],
            outputs=[
                pb.ModelMetadataResponse.TensorMetadata(name=n, datatype=dt, shape=shapes[n])
                for n, dt in OUTPUTS.items()
            ],
        )

    def ModelInfer(self, request, context):
        try:
            return self._infer(request, context)
        except Exception as exc:
            self._count_failure(request.model_name, exc)
            abort_with(context, exc)

    def ModelStreamInfer(self, request_iterator, context):
        for request in request_iterator:
            yield self._stream_one(request, context)

    def _stream_one(self, request: pb.ModelInferRequest, context) -> pb.ModelStreamInferResponse:
        try:
            return pb.ModelStreamInferResponse(infer_response=self._infer(request, context))
        except Exception as exc:
            self._count_failure(request.model_name, exc)
            if not isinstance(exc, GatiError):
                log.exception("stream request failed")
                return pb.ModelStreamInferResponse(error_message="internal error; see server log")
            return pb.ModelStreamInferResponse(error_message=f"{exc.code}: {exc}")

    def _count_failure(self, model: str, exc: Exception) -> None:
        code = status_code(exc).name if isinstance(exc, GatiError) else "INTERNAL"
        known = model if model in self.engine.models else "(unknown)"
        self.metrics.failures.labels(known, code).inc()

    # --- translation -------------------------------------------------------------------
    def _infer(self, request: pb.ModelInferRequest, context: grpc.ServicerContext):
        served = self.engine.get(request.model_name, request.model_version)
        self.metrics.requests.labels(served.name).inc()
        with self.metrics.latency.labels(served.name).time():
            if len(request.id.encode()) > names.MAX_REQUEST_ID_BYTES:  # it travels in records
                raise InvalidArgument(
                    f"request id is longer than {names.MAX_REQUEST_ID_BYTES} bytes (UTF-8)"
                )
            batch = self._decode(request, served)
            wanted = self._wanted_outputs(request)
            caches = _bool_param(request, names.PARAM_CACHES, True)
            remaining = context.time_remaining() if context is not None else None
            if remaining is not None and remaining <= 0:
                raise DeadlineExceeded("deadline exceeded before the model ran")
            result = self.engine.infer(served.name, batch, caches=caches, request_id=request.id)
            return self._encode(request, served, result, wanted)

    def _decode(self, request: pb.ModelInferRequest, served: ServedModel) -> np.ndarray:
        spec = input_spec(served)
        if len(request.inputs) != 1 or request.inputs[0].name != spec.name:
            got = [i.name for i in request.inputs]
            raise InvalidArgument(f"expected exactly one input '{spec.name}', got {got}")
        raw_count = len(request.raw_input_contents)
        if raw_count not in (0, len(request.inputs)):
            raise InvalidArgument(
                f"{raw_count} raw_input_contents for {len(request.inputs)} inputs; "
                "send one per input"
            )
        tensor = request.inputs[0]
        raw = request.raw_input_contents[0] if raw_count else None
        typed = tensor.contents if tensor.HasField("contents") else None
        return decode_input(spec, tensor.datatype, tensor.shape, raw, typed, self.engine.max_batch)

    @staticmethod
    def _wanted_outputs(request: pb.ModelInferRequest) -> list[str]:
        wanted = [o.name for o in request.outputs] or list(DEFAULT_OUTPUTS)
        unknown = [n for n in wanted if n not in OUTPUTS]
        if unknown:
            raise InvalidArgument(f"unknown outputs {unknown}; available: {list(OUTPUTS)}")
        return wanted

    @staticmethod
    def _encode(
        request: pb.ModelInferRequest, served: ServedModel, result: InferResult, wanted: list[str]
    ) -> pb.ModelInferResponse:
        arrays = {
            names.OUTPUT_SCORES: result.scores,
            names.OUTPUT_LABEL: result.labels,
            names.OUTPUT_HIT: result.hit,
            names.OUTPUT_EXIT_LAYER: result.exit_index,
        }
        response = pb.ModelInferResponse(
            model_name=served.name, model_version=served.version, id=request.id
        )
        for name in wanted:
            array = arrays[name]
            response.outputs.add(name=name, datatype=OUTPUTS[name], shape=list(array.shape))
            response.raw_output_contents.append(encode(array))
        response.parameters[names.PARAM_HIT].bool_param = bool(result.hit.any())
        response.parameters[names.PARAM_EXIT_LAYER].string_param = result.exit_layer
        response.parameters[names.PARAM_BUNDLE_VERSION].int64_param = result.bundle_version
        response.parameters[names.PARAM_EXACT_HIT].bool_param = result.exact_hits > 0
        return response
