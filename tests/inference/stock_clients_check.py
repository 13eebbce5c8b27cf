"""Drive one gati inference service with the stock tritonclient.http and tritonclient.grpc
clients, unchanged, and print what each said as JSON (the test compares them).

Runs in its own process: tritonclient.grpc registers Triton's own `inference` protos in the
protobuf descriptor pool, which would clash with gati's generated stubs in one process.
Usage: python stock_clients_check.py HTTP_HOST:PORT GRPC_HOST:PORT MODEL NPZ
"""

import json
import sys

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from google.protobuf.json_format import MessageToDict
from tritonclient.utils import InferenceServerException

NUMBERS = {"count", "ns", "last_inference", "inference_count", "execution_count", "batch_size"}
NUMBERS |= {"dims", "shape", "max_batch_size"}
NO_CACHES = {"gati.caches": False}


def plain(message):
    """A tritonclient.grpc proto as JSON with every field, and its 64-bit ints as ints."""
    doc = MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return _ints(doc)


def _ints(value, key=""):
    if isinstance(value, dict):
        return {k: _ints(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_ints(v, key) for v in value]
    if key in NUMBERS and isinstance(value, str):
        return int(value)
    return value


def http_infer(client, model, x, *, binary=True, outputs=True, params=NO_CACHES, **kw):
    inp = httpclient.InferInput("image", list(x.shape), "UINT8")
    inp.set_data_from_numpy(x, binary_data=binary)
    wanted = None
    if outputs:
        wanted = [
            httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("scores", "label")
        ]
    return client.infer(model, [inp], outputs=wanted, parameters=params, **kw)


def grpc_infer(client, model, x, *, params=NO_CACHES):
    inp = grpcclient.InferInput("image", list(x.shape), "UINT8")
    inp.set_data_from_numpy(x)
    wanted = [grpcclient.InferRequestedOutput(n) for n in ("scores", "label")]
    return client.infer(model, [inp], outputs=wanted, parameters=params)


def answer(result):
    return {
        "scores": result.as_numpy("scores").tolist(),
        "labels": result.as_numpy("label").tolist(),
    }


def error_of(call):
    try:
        call()
    except InferenceServerException as exc:
        return {"status": exc.status(), "message": exc.message()}
    return None


def main() -> None:
    http_url, grpc_url, model, npz = sys.argv[1:5]
    x = np.load(npz)["x"]
    http = httpclient.InferenceServerClient(url=http_url)
    grpc = grpcclient.InferenceServerClient(url=grpc_url)
    out = {}
    for name, client in (("http", http), ("grpc", grpc)):
        out[name] = {
            "live": client.is_server_live(),
            "ready": client.is_server_ready(),
            "model_ready": client.is_model_ready(model),
            "unknown_ready": client.is_model_ready("no-such-model"),
        }
    out["http"]["server"] = http.get_server_metadata()
    out["grpc"]["server"] = plain(grpc.get_server_metadata())
    out["http"]["metadata"] = http.get_model_metadata(model)
    out["grpc"]["metadata"] = plain(grpc.get_model_metadata(model))
    out["http"]["config"] = http.get_model_config(model)
    out["grpc"]["config"] = plain(grpc.get_model_config(model).config)
    out["before"] = http.get_inference_statistics(model)

    tally = {"rows": 0, "requests": 0, "executions": 0, "failed": 0, "exact_rows": 0}

    def ok(rows, ran=True):
        tally["rows"] += rows
        tally["requests"] += 1
        tally["executions"] += ran

    for batch in (1, 16):  # binary tensors both ways over HTTP (the client's default)
        out["http"][f"batch_{batch}"] = answer(http_infer(http, model, x[:batch]))
        out["grpc"][f"batch_{batch}"] = answer(grpc_infer(grpc, model, x[:batch]))
        ok(batch)
        ok(batch)
    out["http"]["json_4"] = answer(http_infer(http, model, x[:4], binary=False))  # JSON tensors
    ok(4)
    default = http_infer(http, model, x[:2], outputs=False)  # every default output, binary
    out["http"]["default_outputs"] = [o["name"] for o in default.get_response()["outputs"]]
    out["http"]["default_2"] = answer(default)
    ok(2)
    gzip = http_infer(http, model, x[:2], request_compression_algorithm="gzip")
    out["http"]["gzip_2"] = answer(gzip)
    ok(2)
    # The exact-match cache: HTTP's request fills it, gRPC's same image is answered from it.
    first = http_infer(http, model, x[40:41], params={})
    again = grpc_infer(grpc, model, x[40:41], params={})
    out["http"]["exact_first"] = first.get_response()["parameters"]
    out["grpc"]["exact_again"] = plain(again.get_response())["parameters"]
    out["http"]["exact_answer"] = answer(first)
    out["grpc"]["exact_answer"] = answer(again)
    ok(1)
    ok(1, ran=False)
    tally["exact_rows"] += 1
    # Errors: a wrong datatype counts as a failure of the model; an unknown model does not.
    floats = x[:1].astype(np.float32)
    bad_http = httpclient.InferInput("image", list(floats.shape), "FP32")
    bad_http.set_data_from_numpy(floats)
    bad_grpc = grpcclient.InferInput("image", list(floats.shape), "FP32")
    bad_grpc.set_data_from_numpy(floats)
    out["http"]["bad_datatype"] = error_of(lambda: http.infer(model, [bad_http]))
    out["grpc"]["bad_datatype"] = error_of(lambda: grpc.infer(model, [bad_grpc]))
    tally["failed"] += 2
    images = httpclient.InferInput("image", [1, 32, 32, 3], "UINT8")
    images.set_data_from_numpy(x[:1])
    out["http"]["unknown_model"] = error_of(lambda: http.infer("no-such-model", [images]))
    out["grpc"]["unknown_model"] = error_of(lambda: grpc_infer(grpc, "no-such-model", x[:1]))

    out["tally"] = tally
    out["http"]["stats"] = http.get_inference_statistics(model)
    out["grpc"]["stats"] = plain(grpc.get_inference_statistics(model))
    out["http"]["all_stats"] = http.get_inference_statistics()
    out["grpc"]["all_stats"] = plain(grpc.get_inference_statistics())
    print(json.dumps(out))


if __name__ == "__main__":
    main()
