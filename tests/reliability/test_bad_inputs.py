"""Bad inputs against the live inference service, generated with hypothesis.

Random model names and versions, input names, datatypes, shapes (negative, zero, huge),
byte lengths, typed contents, parameters and requested outputs: half built from scratch, half
near misses of a good request (a few fields changed: right shape, wrong length; right bytes,
wrong datatype), which reach the deeper checks. The contract: each is
answered (a well-formed one may well succeed) or refused with a clean status, INVALID_ARGUMENT,
NOT_FOUND or RESOURCE_EXHAUSTED, never INTERNAL or UNKNOWN; the service stays healthy and a
good request succeeds afterwards. The streaming call gets the same treatment: an error there
is a message in the stream, which must never be the generic internal one.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gati import names
from gati.api import grpc_service_pb2 as pb
from gati.api import grpc_service_pb2_grpc as pb_grpc
from tests.reliability.figures import Figures
from tests.reliability.rig import MODEL, Rig

CLEAN = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
ROW = (32, 32, 3)  # the served model's input row, UINT8
DATATYPES = ["UINT8", "INT8", "UINT16", "FP16", "FP32", "FP64", "INT64", "BOOL", "BYTES", ""]
OUTPUTS = [names.OUTPUT_SCORES, names.OUTPUT_LABEL, names.OUTPUT_HIT, names.OUTPUT_EXIT_LAYER]
MAX_BYTES = 64 << 20  # the service's default --max-message-bytes
SETTINGS = settings(
    max_examples=150,
    deadline=None,
    database=None,  # nothing written into the repository
    suppress_health_check=[HealthCheck.too_slow],
)

int64 = st.integers(-(2**63), 2**63 - 1)
shapes = st.one_of(
    st.builds(lambda b: [b, *ROW], st.sampled_from([-1, 0, 1, 2, 257, 2**31, 2**62])),
    st.lists(st.one_of(st.integers(-3, 40), int64), max_size=6),
)


@st.composite
def contents(draw: st.DrawFn, tensor: pb.ModelInferRequest.InferInputTensor) -> bytes | None:
    """Raw bytes for a tensor: the right length for its shape, a near miss, or anything."""
    dims = list(tensor.shape)
    exact = int(np.prod(dims)) if dims and all(0 <= d <= 64 for d in dims) else None
    kind = draw(st.sampled_from(["exact", "off", "random", "none"]))
    if kind == "exact" and exact is not None and exact <= 3 * 3072:
        return draw(st.binary(min_size=exact, max_size=exact))
    if kind == "off" and exact is not None and exact <= 3 * 3072:
        n = max(0, exact + draw(st.sampled_from([-1, 1, 3072, -3072])))
        return draw(st.binary(min_size=n, max_size=n))
    if kind == "random":
        return draw(st.binary(max_size=4096))
    return None


def _param(draw: st.DrawFn, param: pb.InferParameter) -> None:
    kind = draw(st.sampled_from(["bool", "int64", "string", "double", "uint64"]))
    if kind == "bool":
        param.bool_param = draw(st.booleans())
    elif kind == "int64":
        param.int64_param = draw(int64)
    elif kind == "string":
        param.string_param = draw(st.text(max_size=8))
    elif kind == "double":
        param.double_param = draw(st.floats())
    else:
        param.uint64_param = draw(st.integers(0, 2**64 - 1))


def _typed(draw: st.DrawFn, tensor: pb.ModelInferRequest.InferInputTensor) -> None:
    typed = draw(st.sampled_from(["uint", "fp32", "int64", "bytes"]))
    if typed == "uint":
        tensor.contents.uint_contents.extend(draw(st.lists(st.integers(0, 2**32 - 1))))
    elif typed == "fp32":
        tensor.contents.fp32_contents.extend(draw(st.lists(st.floats(width=32))))
    elif typed == "int64":
        tensor.contents.int64_contents.extend(draw(st.lists(int64)))
    else:
        tensor.contents.bytes_contents.extend(draw(st.lists(st.binary(max_size=16))))


@st.composite
def anything(draw: st.DrawFn) -> pb.ModelInferRequest:
    """A request built from scratch: every field random."""
    r = pb.ModelInferRequest(
        model_name=draw(st.one_of(st.just(MODEL), st.text())),
        model_version=draw(st.one_of(st.just(""), st.text(max_size=4))),
        id=draw(st.text(max_size=40)),
    )
    for _ in range(draw(st.integers(0, 2))):
        tensor = r.inputs.add(
            name=draw(st.one_of(st.just(names.INPUT_IMAGE), st.text(max_size=8))),
            datatype=draw(st.one_of(st.sampled_from(DATATYPES), st.text(max_size=6))),
            shape=draw(shapes),
        )
        if draw(st.booleans()):
            _typed(draw, tensor)
        raw = draw(contents(tensor))
        if raw is not None:
            r.raw_input_contents.append(raw)
    for _ in range(draw(st.integers(0, 2))):
        _param(draw, r.parameters[draw(st.one_of(st.just(names.PARAM_CACHES), st.text()))])
    for name in draw(st.lists(st.one_of(st.sampled_from(OUTPUTS), st.text(max_size=8)))):
        r.outputs.add(name=name)
    return r


MUTATIONS = (
    "model", "version", "input name", "datatype", "shape", "length", "typed", "extra input",
    "extra raw", "no raw", "parameter", "output",
)  # fmt: skip


@st.composite
def near_misses(draw: st.DrawFn) -> pb.ModelInferRequest:
    """A good request (batch 1-3) with a few things wrong, so validation is reached deep down."""
    batch = draw(st.integers(1, 3))
    r = pb.ModelInferRequest(model_name=MODEL, id=draw(st.text(max_size=8)))
    tensor = r.inputs.add(name=names.INPUT_IMAGE, datatype="UINT8", shape=[batch, *ROW])
    raw = draw(st.binary(min_size=batch * 3072, max_size=batch * 3072))
    for change in draw(st.lists(st.sampled_from(MUTATIONS), max_size=3, unique=True)):
        if change == "model":
            r.model_name = draw(st.sampled_from(["", "CIFAR", MODEL + " ", "resnet20", "../x"]))
        elif change == "version":
            r.model_version = draw(st.sampled_from(["1", "2", "0", "latest"]))
        elif change == "input name":
            tensor.name = draw(st.sampled_from(["", "IMAGE", "input", "image\x00"]))
        elif change == "datatype":
            tensor.datatype = draw(st.sampled_from(DATATYPES[1:]))
        elif change == "shape":
            del tensor.shape[:]
            tensor.shape.extend(draw(shapes))
        elif change == "length":
            if raw is not None:  # cut short, or one byte over when cut to nothing
                raw = raw[: draw(st.integers(0, len(raw) - 1))] or raw + b"\0"
        elif change == "typed":
            _typed(draw, tensor)
        elif change == "extra input":
            r.inputs.add(name=draw(st.sampled_from([names.INPUT_IMAGE, "mask"])), datatype="UINT8")
            r.inputs[-1].shape.extend([batch, *ROW])
        elif change == "extra raw":
            r.raw_input_contents.append(raw or b"")
        elif change == "no raw":
            raw = None
        elif change == "parameter":
            _param(draw, r.parameters[draw(st.sampled_from([names.PARAM_CACHES, "priority"]))])
        else:
            r.outputs.add(name=draw(st.one_of(st.sampled_from(OUTPUTS), st.text(max_size=8))))
    if raw is not None:
        r.raw_input_contents.insert(0, raw)
    return r


bad_requests = st.one_of(near_misses(), anything())


@pytest.fixture(scope="module")
def stub(rig: Rig) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    options = [("grpc.max_send_message_length", 2 * MAX_BYTES)]  # let oversize ones leave
    with grpc.insecure_channel(rig.address, options=options) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def _code(call, *args) -> tuple[grpc.StatusCode, str]:
    try:
        call(*args, timeout=30)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


@given(bad_requests)
@SETTINGS
def test_bad_requests_get_clean_errors(
    stub: pb_grpc.GRPCInferenceServiceStub, figures: Figures, r: pb.ModelInferRequest
) -> None:
    code, details = _code(stub.ModelInfer, r)
    figures.bad_inputs[code.name] += 1
    assert code in CLEAN, f"{code.name}: {details}"
    # Metadata of whatever model was named: found, or NOT_FOUND
    meta = pb.ModelMetadataRequest(name=r.model_name, version=r.model_version)
    code, details = _code(stub.ModelMetadata, meta)
    assert code in (grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND), f"{code.name}: {details}"


@given(st.lists(bad_requests, min_size=1, max_size=4))
@settings(SETTINGS, max_examples=40)
def test_bad_requests_on_a_stream_get_clean_errors(
    stub: pb_grpc.GRPCInferenceServiceStub, figures: Figures, rs: list[pb.ModelInferRequest]
) -> None:
    replies = list(stub.ModelStreamInfer(iter(rs), timeout=30))
    assert len(replies) == len(rs)
    for reply in replies:
        figures.bad_inputs["stream " + ("error" if reply.error_message else "OK")] += 1
        assert not reply.error_message.startswith("internal"), reply.error_message


def test_oversize_message_is_refused(stub: pb_grpc.GRPCInferenceServiceStub, rig: Rig) -> None:
    r = pb.ModelInferRequest(model_name=MODEL)
    r.inputs.add(name=names.INPUT_IMAGE, datatype="UINT8", shape=[MAX_BYTES // 3072 + 1, *ROW])
    r.raw_input_contents.append(bytes(MAX_BYTES + 3072))
    code, details = _code(stub.ModelInfer, r)
    rig.figures.bad_inputs[code.name] += 1
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, f"{code.name}: {details}"


def test_service_healthy_after_bad_inputs(rig: Rig) -> None:
    assert rig.healthy("inference")
    reply = rig.ask(caches=True)
    assert reply.model_name == MODEL and len(reply.raw_output_contents) == 2
    failures = rig.metrics("inference").by("gati_inference_failures_total", "code")
    assert failures.get("INTERNAL", 0) == 0 and failures.get("UNKNOWN", 0) == 0, failures
