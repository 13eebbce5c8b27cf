"""The REST binding beside gRPC, on one `gati serve inference` process: the stock
tritonclient.http and tritonclient.grpc give the same answers, configs and statistics; bad
requests get 400/404 with a message and the service keeps serving."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from gati import names
from gati.api import grpc_service_pb2 as pb
from gati.models import load_model
from launch.ports import free_port
from launch.processes import start_healthy
from launch.topology import Inference, Model
from tests.inference.helpers import infer_request, inference_stub, output

CHECK = Path(__file__).with_name("stock_clients_check.py")
IMAGE = {"name": "image", "datatype": "UINT8", "shape": [1, 32, 32, 3]}


MAX_BODY = 8 << 20  # the served limit: small enough that the oversize test stays cheap


@dataclass
class Served:
    grpc_port: int
    http_port: int
    x: np.ndarray
    npz: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, resnet20_weights: Path, assets: Path
) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("rest")
    x = np.load(assets / "cifar10" / "test.npz")["x"][:64]
    npz = tmp / "images.npz"
    np.savez(npz, x=x)
    grpc_port, http_port = free_port(), free_port()
    service = Inference(
        port=grpc_port, http_port=http_port, model=Model("cifar", "resnet20", resnet20_weights),
        extra=("--max-message-bytes", str(MAX_BODY)),
    )  # fmt: skip
    server = start_healthy(service, tmp / "inference.log", 120)
    try:
        yield Served(grpc_port, http_port, x, npz)
    finally:
        server.stop()


def call(
    url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One real HTTP request: status, headers, body (errors included)."""
    request = urllib.request.Request(url, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(request) as reply:
            return reply.status, dict(reply.headers), reply.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def get_json(url: str) -> tuple[int, dict]:
    status, _, body = call(url)
    return status, json.loads(body)


def stats(served: Served) -> dict:
    status, doc = get_json(f"{served.base}/v2/models/cifar/stats")
    assert status == 200
    [model] = doc["model_stats"]
    return model


def subset(small: object, big: object, where: str = "") -> None:
    """Every key and item of `small` is in `big`, equal (`big` may hold more defaults)."""
    if isinstance(small, dict):
        assert isinstance(big, dict), where
        for key, value in small.items():
            assert key in big, f"{where}.{key} missing"
            subset(value, big[key], f"{where}.{key}")
    elif isinstance(small, list):
        assert isinstance(big, list) and len(small) == len(big), where
        for i, (a, b) in enumerate(zip(small, big, strict=True)):
            subset(a, b, f"{where}[{i}]")
    else:
        assert small == big, f"{where}: {small!r} != {big!r}"


def test_stock_http_and_grpc_clients_agree(served: Served, resnet20_weights: Path) -> None:
    run = subprocess.run(
        [
            sys.executable,
            str(CHECK),
            f"127.0.0.1:{served.http_port}",
            f"127.0.0.1:{served.grpc_port}",
            "cifar",
            str(served.npz),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout)
    http, grpc_ = got["http"], got["grpc"]
    for side in (http, grpc_):
        assert side["live"] and side["ready"] and side["model_ready"]
        assert side["unknown_ready"] is False
    assert http["server"] == grpc_["server"]
    assert http["server"]["name"] == "gati"
    assert "binary_tensor_data" in http["server"]["extensions"]
    assert http["metadata"] == grpc_["metadata"]
    assert http["metadata"]["inputs"] == [
        {"name": "image", "datatype": "UINT8", "shape": [-1, 32, 32, 3]}
    ]

    # ModelConfig: the same on both, Triton's layout (dims without the batch dimension).
    subset(http["config"], grpc_["config"], "config")
    config = http["config"]
    assert config["name"] == "cifar" and config["max_batch_size"] == 256
    assert config["input"] == [{"name": "image", "data_type": "TYPE_UINT8", "dims": [32, 32, 3]}]
    outputs = {o["name"]: o for o in config["output"]}
    assert outputs["scores"]["data_type"] == "TYPE_FP32" and outputs["scores"]["dims"] == [10]
    assert outputs["label"]["dims"] == [1] and outputs["label"]["reshape"] == {"shape": []}

    # The same images through both clients: identical answers, the model's own.
    model = load_model("resnet20", resnet20_weights)
    with torch.inference_mode():
        expected = model(torch.from_numpy(served.x[:16])).numpy()
    for batch in (1, 16):
        assert http[f"batch_{batch}"] == grpc_[f"batch_{batch}"]
        scores = np.array(http[f"batch_{batch}"]["scores"], dtype=np.float32)
        np.testing.assert_allclose(scores, expected[:batch], rtol=1e-4, atol=1e-4)
        assert http[f"batch_{batch}"]["labels"] == expected[:batch].argmax(1).tolist()
    for key, rows in (("json_4", 4), ("default_2", 2), ("gzip_2", 2)):
        scores = np.array(http[key]["scores"], dtype=np.float32)
        np.testing.assert_allclose(scores, expected[:rows], rtol=1e-4, atol=1e-4)
        assert http[key]["labels"] == expected[:rows].argmax(1).tolist()
    assert http["default_outputs"] == ["scores", "label"]
    assert http["default_2"] == http["gzip_2"]

    # The exact-match cache is shared: filled over HTTP, answered over gRPC.
    assert http["exact_first"][names.PARAM_EXACT_HIT] is False
    assert http["exact_first"][names.PARAM_HIT] is False
    assert http["exact_first"][names.PARAM_BUNDLE_VERSION] == 0
    assert grpc_["exact_again"][names.PARAM_EXACT_HIT] == {"bool_param": True}
    assert http["exact_answer"] == grpc_["exact_answer"]

    # Errors carry the same message on both; HTTP's status is 400 / 404.
    assert http["bad_datatype"]["status"] == "400"
    assert grpc_["bad_datatype"]["status"] == "StatusCode.INVALID_ARGUMENT"
    assert "datatype FP32 not accepted, expected UINT8" in http["bad_datatype"]["message"]
    assert http["bad_datatype"]["message"] == grpc_["bad_datatype"]["message"]
    assert http["unknown_model"]["status"] == "404"
    assert grpc_["unknown_model"]["status"] == "StatusCode.NOT_FOUND"
    assert "unknown model 'no-such-model'" in http["unknown_model"]["message"]

    # ModelStatistics: one set of numbers, read through both; counts are what was sent.
    [mine] = http["stats"]["model_stats"]
    [theirs] = grpc_["stats"]["model_stats"]
    exits = mine.pop("gati.exits")
    subset(mine, theirs, "stats")
    assert http["all_stats"]["model_stats"][0]["inference_count"] == mine["inference_count"]
    subset(grpc_["all_stats"], grpc_["stats"], "all_stats")
    [before] = got["before"]["model_stats"]
    tally = got["tally"]
    infer = mine["inference_stats"]
    was = before["inference_stats"]
    assert mine["inference_count"] - before["inference_count"] == tally["rows"] == 44
    assert mine["execution_count"] - before["execution_count"] == tally["executions"] == 8
    assert infer["success"]["count"] - was["success"]["count"] == tally["requests"] == 9
    assert infer["fail"]["count"] - was["fail"]["count"] == tally["failed"] == 2
    for phase in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert infer[phase]["count"] - was[phase]["count"] == tally["requests"], phase
    assert infer["compute_infer"]["ns"] > was["compute_infer"]["ns"]
    assert infer["success"]["ns"] >= infer["compute_infer"]["ns"]
    assert infer["cache_hit"]["count"] - was["cache_hit"]["count"] == 1
    assert infer["cache_miss"]["count"] - was["cache_miss"]["count"] == 1
    assert {1, 2, 4, 16} <= {b["batch_size"] for b in mine["batch_stats"]}
    assert mine["last_inference"] > 1_600_000_000_000  # milliseconds since the epoch
    old = before["gati.exits"]
    assert exits.get("exact", 0) - old.get("exact", 0) == tally["exact_rows"]
    assert exits["full"] - old.get("full", 0) == tally["rows"] - tally["exact_rows"]
    assert sum(exits.values()) == mine["inference_count"]


def test_grpc_statistics_carry_the_exits_and_match_rest(served: Served) -> None:
    with inference_stub(served.grpc_port) as stub:
        stub.ModelInfer(infer_request("cifar", served.x[50:53], caches=False))
        reply, rpc = stub.ModelStatistics.with_call(pb.ModelStatisticsRequest(name="cifar"))
        config = stub.ModelConfig(pb.ModelConfigRequest(name="cifar"))
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelConfig(pb.ModelConfigRequest(name="nope"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelStatistics(pb.ModelStatisticsRequest(name="cifar", version="7"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    rest = stats(served)
    [model] = reply.model_stats
    assert model.inference_count == rest["inference_count"] >= 3
    assert model.inference_stats.success.count == rest["inference_stats"]["success"]["count"]
    assert model.inference_stats.compute_infer.ns == rest["inference_stats"]["compute_infer"]["ns"]
    trailers = dict(rpc.trailing_metadata())
    assert json.loads(trailers["gati-exits"]) == {"cifar": rest["gati.exits"]}
    assert config.config.max_batch_size == 256
    assert [o.name for o in config.config.output][:2] == [names.OUTPUT_SCORES, names.OUTPUT_LABEL]
    status, doc = get_json(f"{served.base}/v2/models/cifar/versions/1/config")
    assert status == 200 and doc["max_batch_size"] == config.config.max_batch_size


def test_health_metadata_and_routes(served: Served) -> None:
    assert get_json(f"{served.base}/v2/health/live") == (200, {"live": True})
    assert get_json(f"{served.base}/v2/health/ready") == (200, {"ready": True})
    assert get_json(f"{served.base}/v2/models/cifar/ready") == (
        200,
        {"name": "cifar", "ready": True},
    )
    assert get_json(f"{served.base}/v2/models/cifar/versions/1/ready")[0] == 200
    status, doc = get_json(f"{served.base}/v2/models/cifar/versions/2/ready")
    assert status == 404 and "no version '2'" in doc["error"]
    status, doc = get_json(f"{served.base}/v2/models/cifar")
    assert status == 200 and doc["versions"] == ["1"] and doc["platform"] == "pytorch_staged"
    status, doc = get_json(f"{served.base}/v2/models/elsewhere")
    assert status == 404 and "unknown model 'elsewhere'" in doc["error"]
    status, doc = get_json(f"{served.base}/v2/models/stats")
    assert status == 200 and [m["name"] for m in doc["model_stats"]] == ["cifar"]
    status, doc = get_json(f"{served.base}/v2/models/elsewhere/stats")
    assert status == 404 and "unknown model" in doc["error"]
    status, doc = get_json(f"{served.base}/v2/no/such/route")
    assert status == 404 and "Not Found" in doc["error"]
    status, doc = get_json(f"{served.base}/v2/models/cifar/infer")  # GET: only POST infers
    assert status == 405 and "Method Not Allowed" in doc["error"]


def infer_json(served: Served, doc: object, path: str = "/v2/models/cifar/infer") -> tuple:
    body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    status, _, raw = call(served.base + path, body, {"Content-Type": "application/json"})
    return status, json.loads(raw)


def binary_request(header: dict, tail: bytes, length: str | None = None) -> tuple[bytes, dict]:
    head = json.dumps(header).encode()
    return head + tail, {"Inference-Header-Content-Length": length or str(len(head))}


def test_json_and_binary_tensors_by_hand(served: Served) -> None:
    x = served.x[:3]
    with inference_stub(served.grpc_port) as stub:
        reference = stub.ModelInfer(infer_request("cifar", x, caches=False))
    want_scores = output(reference, names.OUTPUT_SCORES)
    want_labels = output(reference, names.OUTPUT_LABEL)

    # JSON both ways; nested row-major data; the optional gati outputs; the request id.
    doc = {
        "id": "rest-1",
        "parameters": {names.PARAM_CACHES: False},
        "inputs": [{**IMAGE, "shape": [3, 32, 32, 3], "data": x.tolist()}],
        "outputs": [{"name": n} for n in ("label", "scores", "gati_hit", "gati_exit_layer")],
    }
    status, reply = infer_json(served, doc)
    assert status == 200, reply
    assert reply["id"] == "rest-1" and reply["model_name"] == "cifar"
    assert reply["model_version"] == "1"
    assert reply["parameters"][names.PARAM_HIT] is False
    assert reply["parameters"][names.PARAM_EXIT_LAYER] == ""
    got = {o["name"]: o for o in reply["outputs"]}
    assert [o["name"] for o in reply["outputs"]] == [
        "label",
        "scores",
        "gati_hit",
        "gati_exit_layer",
    ]
    assert got["label"] == {
        "name": "label",
        "datatype": "INT64",
        "shape": [3],
        "data": want_labels.tolist(),
    }
    assert got["scores"]["shape"] == [3, 10]
    np.testing.assert_array_equal(
        np.array(got["scores"]["data"], np.float32).reshape(3, 10), want_scores
    )
    assert got["gati_hit"]["data"] == [False] * 3 and got["gati_exit_layer"]["data"] == [-1] * 3

    # Binary in, one output binary and one JSON out.
    header = {
        "parameters": {names.PARAM_CACHES: False},
        "inputs": [
            {**IMAGE, "shape": [3, 32, 32, 3], "parameters": {"binary_data_size": x.nbytes}}
        ],
        "outputs": [{"name": "scores", "parameters": {"binary_data": True}}, {"name": "label"}],
    }
    body, headers = binary_request(header, x.tobytes())
    status, reply_headers, raw = call(
        f"{served.base}/v2/models/cifar/versions/1/infer", body, headers
    )
    assert status == 200, raw
    length = int(reply_headers["Inference-Header-Content-Length"])
    head = json.loads(raw[:length])
    [scores, label] = head["outputs"]
    assert scores["parameters"] == {"binary_data_size": 3 * 10 * 4}
    assert "data" not in scores and label["data"] == want_labels.tolist()
    np.testing.assert_array_equal(np.frombuffer(raw[length:], "<f4").reshape(3, 10), want_scores)


ZEROS = [0] * 3072  # one image of JSON data
ONE = {**IMAGE, "data": ZEROS}
BAD_JSON_REQUESTS = [  # (body, part of the message); each is a 400
    (b"{not json", "not valid JSON"),
    (b"[" * 100_000, "not valid JSON"),  # nesting past the parser's recursion limit
    (b"[1, 2]", "must be a JSON object"),
    ({"inputs": "image"}, "'inputs' must be a list"),
    ({"inputs": []}, "expected exactly one input 'image', got []"),
    ({"inputs": [{**ONE, "name": "pixels"}]}, "got ['pixels']"),
    ({"inputs": [{**IMAGE, "datatype": "FP32", "data": [0.5] * 3072}]}, "datatype FP32"),
    ({"inputs": [{**IMAGE, "datatype": "BYTES", "data": ["a"]}]}, "datatype BYTES"),
    ({"inputs": [{**IMAGE, "shape": [1, 32, 32], "data": [0] * 1024}]}, "does not match"),
    ({"inputs": [{**IMAGE, "shape": "1x32"}]}, "'shape' must be a list of integers"),
    ({"inputs": [{**IMAGE, "data": [0] * 3071}]}, "3071 values"),
    ({"inputs": [{**IMAGE, "data": [300] * 3072}]}, "outside the UINT8 range"),
    ({"inputs": [{**IMAGE, "data": [0.5] * 3072}]}, "not UINT8"),
    ({"inputs": [{**IMAGE, "data": [[0, 1], [2]]}]}, "not a rectangular array"),
    ({"inputs": [IMAGE]}, "no contents"),
    ({"inputs": [ONE], "outputs": [{"name": "logits"}]}, "unknown outputs ['logits']"),
    ({"inputs": [ONE], "parameters": {names.PARAM_CACHES: "no"}}, "must be a bool"),
    ({"inputs": [ONE], "id": 7}, "'id' must be a string"),
    ({"inputs": [ONE], "id": "x" * 300}, "request id is longer"),
    ({"inputs": [{**IMAGE, "shape": [300, 32, 32, 3], "data": [0]}]}, "exceeds the limit of 256"),
]


def test_bad_requests_get_400_or_404_and_the_service_keeps_serving(served: Served) -> None:
    failed_before = stats(served)["inference_stats"]["fail"]["count"]
    for doc, part in BAD_JSON_REQUESTS:
        status, reply = infer_json(served, doc)
        assert status == 400 and part in reply["error"], (part, reply)
    x = served.x[:1].tobytes()
    sized = {"inputs": [{**IMAGE, "parameters": {"binary_data_size": len(x)}}]}
    negative = {"inputs": [{**IMAGE, "parameters": {"binary_data_size": -1}}]}
    both = {"inputs": [{**ONE, "parameters": {"binary_data_size": len(x)}}]}
    bad_binary = [  # (body, headers, part of the message)
        (*binary_request(sized, x[:-1]), "runs past the end"),
        (*binary_request(sized, x + b"\0\0"), "2 bytes of binary data that no input claims"),
        (*binary_request(sized, x, "ten"), "is not an integer"),
        (*binary_request(sized, x, "999999"), "outside the"),
        (*binary_request(negative, b""), "non-negative"),
        (*binary_request(both, x), "both 'data'"),
    ]
    for body, headers, part in bad_binary:
        status, _, raw = call(f"{served.base}/v2/models/cifar/infer", body, headers)
        assert status == 400 and part in json.loads(raw)["error"], (part, raw)
    counted = len(BAD_JSON_REQUESTS) + len(bad_binary)

    # Unknown models and versions: 404, and not a failure of any served model.
    ok = {"inputs": [ONE]}
    status, reply = infer_json(served, ok, "/v2/models/elsewhere/infer")
    assert status == 404 and "unknown model 'elsewhere'" in reply["error"]
    status, reply = infer_json(served, ok, "/v2/models/cifar/versions/9/infer")
    assert status == 404 and "no version '9'" in reply["error"]

    # Still healthy and serving, and every failure was counted, on both transports.
    assert get_json(f"{served.base}/v2/health/ready") == (200, {"ready": True})
    status, reply = infer_json(served, ok)
    assert status == 200 and len(reply["outputs"]) == 2
    after = stats(served)["inference_stats"]["fail"]["count"]
    assert after - failed_before == counted  # requests for no served model count for none
    with inference_stub(served.grpc_port) as stub:
        reply = stub.ModelStatistics(pb.ModelStatisticsRequest(name="cifar"))
        assert reply.model_stats[0].inference_stats.fail.count == after
        assert stub.ServerReady(pb.ServerReadyRequest()).ready


def test_an_oversized_body_is_refused(served: Served) -> None:
    """Bodies past max_message_bytes (the gRPC limit too) get 413, not a crash."""
    body = b" " * (MAX_BODY + 1)
    status, _, raw = call(f"{served.base}/v2/models/cifar/infer", body)
    assert status == 413 and "Request Entity Too Large" in json.loads(raw)["error"]
    assert get_json(f"{served.base}/v2/health/live")[0] == 200
