"""The REST server's life in the inference service: off by -1, a picked port by 0, health
shared with gRPC, requests from both transports at once, and a stop that closes the port."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from gati import names
from gati.api import grpc_service_pb2 as pb
from gati.config import ConfigError
from services.inference.config import InferenceConfig
from services.inference.server import InferenceServer, build
from tests.inference.helpers import infer_request, inference_stub, output

TINY = {"model": "tiny", "arch": "tests.inference.user_model:build"}


@pytest.fixture
def server() -> Iterator[InferenceServer]:
    srv = build(InferenceConfig(port=0, metrics_port=-1, http_port=0, **TINY))
    yield srv
    srv.stop()


def status_of(url: str, body: bytes | None = None) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body)) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def rest_infer(port: int, x: np.ndarray) -> list[float]:
    tensor = {"name": names.INPUT_IMAGE, "datatype": "FP32", "shape": list(x.shape)}
    doc = {"inputs": [{**tensor, "data": x.tolist()}], "parameters": {names.PARAM_CACHES: False}}
    url = f"http://127.0.0.1:{port}/v2/models/tiny/infer"
    status, reply = status_of(url, json.dumps(doc).encode())
    assert status == 200, reply
    return reply["outputs"][0]["data"]


def test_rest_is_off_with_minus_one_and_the_setting_is_checked() -> None:
    srv = build(InferenceConfig(port=0, metrics_port=-1, http_port=-1, **TINY))
    try:
        assert srv.rest is None and srv.http_port is None
        with inference_stub(srv.port) as stub:
            assert stub.ServerReady(pb.ServerReadyRequest()).ready
    finally:
        srv.stop()
    with pytest.raises(ConfigError, match="http_port"):
        InferenceConfig(port=0, http_port=-2, **TINY)
    with pytest.raises(ConfigError, match="http_port"):
        InferenceConfig(port=0, http_port=70000, **TINY)


def test_both_transports_at_once_give_one_answer_and_one_count(server: InferenceServer) -> None:
    assert server.http_port is not None and server.http_port > 0
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((1, 8)).astype(np.float32) for _ in range(12)]
    with inference_stub(server.port) as stub:

        def by_grpc(x: np.ndarray) -> list[float]:
            reply = stub.ModelInfer(infer_request("tiny", x, "FP32", caches=False))
            return output(reply, names.OUTPUT_SCORES).reshape(-1).tolist()

        with ThreadPoolExecutor(8) as pool:
            rest = list(pool.map(lambda x: rest_infer(server.http_port, x), xs))
            grpc_ = list(pool.map(by_grpc, xs))
        for a, b in zip(rest, grpc_, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
        stats = stub.ModelStatistics(pb.ModelStatisticsRequest(name="tiny")).model_stats[0]
    assert stats.inference_count == 24 and stats.inference_stats.success.count == 24
    assert stats.inference_stats.fail.count == 0
    assert [b.batch_size for b in stats.batch_stats] == [1]


def test_health_is_grpcs_and_stop_closes_the_port(server: InferenceServer) -> None:
    base = f"http://127.0.0.1:{server.http_port}"
    assert status_of(f"{base}/v2/health/ready") == (200, {"ready": True})
    server.handle.set_serving(False)  # what a drain does first
    status, doc = status_of(f"{base}/v2/health/ready")
    assert status == 503 and doc["error"] == "not ready"
    assert status_of(f"{base}/v2/health/live")[0] == 503
    with inference_stub(server.port) as stub:
        assert not stub.ServerReady(pb.ServerReadyRequest()).ready
        assert not stub.ServerLive(pb.ServerLiveRequest()).live
    server.handle.set_serving(True)
    assert status_of(f"{base}/v2/health/live") == (200, {"live": True})
    port = server.http_port
    server.stop()
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port)):
        pass
    server.stop()  # stopping twice is harmless (the fixture does it again)


def test_a_taken_rest_port_fails_the_start_naming_it() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=f"cannot bind REST 127.0.0.1:{port}"):
            build(
                InferenceConfig(host="127.0.0.1", port=0, metrics_port=-1, http_port=port, **TINY)
            )
