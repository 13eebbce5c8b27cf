"""The inference service over real gRPC: metadata, outputs, parameters, bad input, health."""

from __future__ import annotations

import math
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gati import names
from gati.api import grpc_service_pb2 as pb
from gati.data import load_npz
from gati.models import load_model
from services.inference.config import InferenceConfig
from services.inference.server import InferenceServer, build
from tests.inference.helpers import infer_request, inference_stub, output

MAX_MESSAGE = 512 * 1024


@pytest.fixture(scope="module")
def server(resnet20_weights: Path) -> Iterator[InferenceServer]:
    srv = build(
        InferenceConfig(
            port=0,
            metrics_port=0,
            http_port=-1,
            model="cifar",
            arch="resnet20",
            weights=str(resnet20_weights),
            max_message_bytes=MAX_MESSAGE,
            max_batch=64,
        )
    )
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def images(assets: Path) -> tuple[np.ndarray, np.ndarray]:
    x, y = load_npz(assets / "cifar10" / "test.npz")
    return x[:64], y[:64]


def test_metadata_and_liveness(server: InferenceServer) -> None:
    with inference_stub(server.port) as stub:
        assert stub.ServerLive(pb.ServerLiveRequest()).live
        assert stub.ServerReady(pb.ServerReadyRequest()).ready
        assert stub.ModelReady(pb.ModelReadyRequest(name="cifar")).ready
        assert not stub.ModelReady(pb.ModelReadyRequest(name="nope")).ready
        meta = stub.ModelMetadata(pb.ModelMetadataRequest(name="cifar"))
        assert meta.inputs[0].name == names.INPUT_IMAGE
        assert meta.inputs[0].datatype == "UINT8"
        assert list(meta.inputs[0].shape) == [-1, 32, 32, 3]
        outs = {o.name: (o.datatype, list(o.shape)) for o in meta.outputs}
        assert outs[names.OUTPUT_SCORES] == ("FP32", [-1, 10])
        assert outs[names.OUTPUT_LABEL] == ("INT64", [-1])
        assert stub.ServerMetadata(pb.ServerMetadataRequest()).name == "gati"


def test_scores_match_in_process_model(
    server: InferenceServer, images: tuple[np.ndarray, np.ndarray], resnet20_weights: Path
) -> None:
    x, _ = images
    reference = load_model("resnet20", resnet20_weights)
    with torch.inference_mode():
        expected = reference(torch.from_numpy(x[:16])).numpy()
    with inference_stub(server.port) as stub:
        response = stub.ModelInfer(infer_request("cifar", x[:16], caches=False))
    scores = output(response, names.OUTPUT_SCORES)
    assert scores.shape == (16, 10)
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(output(response, names.OUTPUT_LABEL), expected.argmax(1))
    assert response.parameters[names.PARAM_HIT].bool_param is False
    assert response.parameters[names.PARAM_BUNDLE_VERSION].int64_param == 0


def test_typed_contents_accepted(
    server: InferenceServer, images: tuple[np.ndarray, np.ndarray]
) -> None:
    x, _ = images
    request = pb.ModelInferRequest(model_name="cifar")
    tensor = request.inputs.add(name=names.INPUT_IMAGE, datatype="UINT8", shape=[2, 32, 32, 3])
    tensor.contents.uint_contents.extend(x[:2].reshape(-1).tolist())
    with inference_stub(server.port) as stub:
        typed = stub.ModelInfer(request)
        raw = stub.ModelInfer(infer_request("cifar", x[:2]))
    np.testing.assert_array_equal(
        output(typed, names.OUTPUT_LABEL), output(raw, names.OUTPUT_LABEL)
    )


def test_stream_infer_answers_in_order_and_survives_errors(
    server: InferenceServer, images: tuple[np.ndarray, np.ndarray]
) -> None:
    x, _ = images
    requests = [infer_request("cifar", x[i : i + 1]) for i in range(3)]
    requests.insert(1, infer_request("missing", x[:1]))
    with inference_stub(server.port) as stub:
        replies = list(stub.ModelStreamInfer(iter(requests)))
    assert len(replies) == 4
    assert "NOT_FOUND" in replies[1].error_message and "missing" in replies[1].error_message
    for reply in (replies[0], replies[2], replies[3]):
        assert reply.error_message == ""
        assert output(reply.infer_response, names.OUTPUT_LABEL).shape == (1,)


def _bad_requests(x: np.ndarray) -> list[tuple[str, pb.ModelInferRequest, grpc.StatusCode, str]]:
    cases = []
    cases.append(
        (
            "unknown model",
            infer_request("nope", x[:1]),
            grpc.StatusCode.NOT_FOUND,
            "unknown model 'nope'",
        )
    )
    r = infer_request("cifar", x[:1])
    r.model_version = "7"
    cases.append(("unknown version", r, grpc.StatusCode.NOT_FOUND, "no version '7'"))
    cases.append(
        (
            "wrong dtype",
            infer_request("cifar", x[:1].astype(np.float32), "FP32"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "expected UINT8",
        )
    )
    cases.append(
        (
            "wrong shape",
            infer_request("cifar", x[:1].reshape(1, 32, 96)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "does not match [-1, 32, 32, 3]",
        )
    )
    r = infer_request("cifar", x[:2])
    r.raw_input_contents[0] = r.raw_input_contents[0][:-5]
    cases.append(("byte length", r, grpc.StatusCode.INVALID_ARGUMENT, "expected 6144"))
    r = infer_request("cifar", x[:1])
    r.inputs[0].contents.uint_contents.extend([1] * 3072)
    cases.append(("raw and typed", r, grpc.StatusCode.INVALID_ARGUMENT, "both"))
    r = infer_request("cifar", x[:0])
    cases.append(("empty batch", r, grpc.StatusCode.INVALID_ARGUMENT, "empty batch"))
    r = infer_request("cifar", x[:1])
    r.id = "i" * 257  # ids travel in activation records: bounded before anything is stored
    cases.append(("long id", r, grpc.StatusCode.INVALID_ARGUMENT, "longer than 256 bytes"))
    cases.append(
        (
            "too large batch",
            infer_request("cifar", np.zeros((65, 32, 32, 3), np.uint8)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "exceeds the limit of 64",
        )
    )
    big = np.zeros((60, 32, 32, 3), np.uint8)  # 184 KB raw fits; the 1 MB below does not
    cases.append(
        (
            "oversize message",
            infer_request("cifar", np.tile(big, (6, 1, 1, 1))),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "larger than max",
        )
    )
    r = infer_request("cifar", x[:1], outputs=("bogus",))
    cases.append(("unknown output", r, grpc.StatusCode.INVALID_ARGUMENT, "unknown outputs"))
    r = infer_request("cifar", x[:1])
    r.inputs[0].name = "pixels"
    cases.append(("wrong input name", r, grpc.StatusCode.INVALID_ARGUMENT, "'image'"))
    r = infer_request("cifar", x[:1])
    r.parameters[names.PARAM_CACHES].string_param = "yes"
    cases.append(("bad parameter", r, grpc.StatusCode.INVALID_ARGUMENT, "must be a bool"))
    return cases


def test_bad_input_gets_clear_errors_and_service_stays_healthy(
    server: InferenceServer, images: tuple[np.ndarray, np.ndarray]
) -> None:
    x, _ = images
    with inference_stub(server.port) as stub:
        for what, request, code, fragment in _bad_requests(x):
            with pytest.raises(grpc.RpcError) as err:
                stub.ModelInfer(request)
            assert err.value.code() == code, what
            assert fragment in err.value.details(), (what, err.value.details())
            good = stub.ModelInfer(infer_request("cifar", x[:1]))
            assert output(good, names.OUTPUT_LABEL).shape == (1,), what
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        status = health.Check(health_pb2.HealthCheckRequest(service=names.HEALTH_INFERENCE))
        assert status.status == health_pb2.HealthCheckResponse.SERVING


def test_nan_and_inf_refused_for_float_models(tmp_path: Path) -> None:
    srv = build(
        InferenceConfig(
            port=0,
            metrics_port=-1,
            http_port=-1,
            model="tiny",
            arch="tests.inference.user_model:build",
        )
    )
    try:
        x = np.ones((2, 8), np.float32)
        with inference_stub(srv.port) as stub:
            ok = stub.ModelInfer(infer_request("tiny", x, "FP32"))
            assert output(ok, names.OUTPUT_SCORES).shape == (2, 3)
            for bad in (math.nan, math.inf):
                y = x.copy()
                y[1, 3] = bad
                with pytest.raises(grpc.RpcError) as err:
                    stub.ModelInfer(infer_request("tiny", y, "FP32"))
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "NaN or infinite" in err.value.details()
    finally:
        srv.stop()


def test_deadline_exceeded_is_reported(
    server: InferenceServer, images: tuple[np.ndarray, np.ndarray]
) -> None:
    x, _ = images
    with inference_stub(server.port) as stub, pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(infer_request("cifar", x), timeout=0.0001)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_metrics_endpoint_counts_requests_and_failures(
    server: InferenceServer, images: tuple[np.ndarray, np.ndarray]
) -> None:
    x, _ = images
    with inference_stub(server.port) as stub:
        stub.ModelInfer(infer_request("cifar", x[:1]))
        with pytest.raises(grpc.RpcError):
            stub.ModelInfer(infer_request("cifar", x[:1].astype(np.float32), "FP32"))
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics").read().decode()
    assert 'gati_inference_requests_total{model="cifar"}' in text
    assert 'gati_inference_failures_total{code="INVALID_ARGUMENT",model="cifar"}' in text
    assert "gati_inference_request_latency_seconds_bucket" in text
