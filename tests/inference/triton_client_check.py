"""Run the stock tritonclient.grpc client against a gati inference service; print JSON.

Runs in its own process: tritonclient registers Triton's own `inference` protos in the
protobuf descriptor pool, which would clash with gati's generated stubs in one process.
Usage: python triton_client_check.py HOST:PORT MODEL NPZ [CA_PEM]
(with CA_PEM: over TLS, `ssl=True`, the server verified against that CA)
"""

import json
import sys

import numpy as np
import tritonclient.grpc as grpcclient


def main() -> None:
    url, model, npz = sys.argv[1:4]
    ca = sys.argv[4] if len(sys.argv) > 4 else None
    data = np.load(npz)
    x = data["x"]
    if ca is None:
        client = grpcclient.InferenceServerClient(url=url)
    else:
        client = grpcclient.InferenceServerClient(url=url, ssl=True, root_certificates=ca)
    out = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(model),
        "server_name": client.get_server_metadata().name,
    }
    meta = client.get_model_metadata(model)
    out["inputs"] = [[i.name, i.datatype, list(i.shape)] for i in meta.inputs]
    out["outputs"] = [[o.name, o.datatype, list(o.shape)] for o in meta.outputs]
    for batch in (1, 16):
        images = x[:batch]
        inp = grpcclient.InferInput("image", list(images.shape), "UINT8")
        inp.set_data_from_numpy(images)
        result = client.infer(
            model,
            [inp],
            outputs=[
                grpcclient.InferRequestedOutput("scores"),
                grpcclient.InferRequestedOutput("label"),
            ],
        )
        out[f"scores_{batch}"] = result.as_numpy("scores").tolist()
        out[f"labels_{batch}"] = result.as_numpy("label").tolist()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
