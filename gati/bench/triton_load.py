"""The benchmarks' client: the stock tritonclient.grpc, batch 1, one request at a time.

Runs as its own process (`python -m gati.bench.triton_load SPEC_JSON`): tritonclient registers
Triton's `inference` protos in the protobuf descriptor pool, which would clash with gati's
generated stubs in one process, so this module imports neither gati.api nor anything that does.
Request i goes to every target before request i + 1 goes to any, in an order that cycles
through every permutation of the targets: load from elsewhere on the machine falls on every
target alike, so their ratios hold while absolute times drift. A plain rotation would not do:
with three targets, two of them served by one process, a target that follows its own
process's other target runs warm (weights still in the core's caches), and under a rotation
the separate process never did: the plain server measured 4-10% slower than the same stack
with caches off. Writes one npz: per target, latency, served label, hit, exit layer, bundle
version and exact-cache hit per request.
"""

from __future__ import annotations

import itertools
import json
import sys
import time

import numpy as np
import tritonclient.grpc as grpcclient
from tqdm import tqdm


def run(spec: dict) -> dict[str, np.ndarray]:
    images = np.load(spec["images"])["x"]
    targets = spec["targets"]  # name -> {"url": ..., "caches": bool}
    model = spec["model"]
    rate = float(spec.get("rate", 0.0))
    n, names = len(images), list(targets)
    orders = list(itertools.permutations(names))
    clients = {k: grpcclient.InferenceServerClient(url=t["url"]) for k, t in targets.items()}
    out: dict[str, np.ndarray] = {}
    for k in names:
        out[f"{k}/latency_s"] = np.zeros(n)
        out[f"{k}/label"] = np.full(n, -1, dtype=np.int64)
        out[f"{k}/hit"] = np.zeros(n, dtype=bool)
        out[f"{k}/exact_hit"] = np.zeros(n, dtype=bool)
        out[f"{k}/version"] = np.zeros(n, dtype=np.int64)
        out[f"{k}/exit_layer"] = np.array([""] * n, dtype=object)
        out[f"{k}/error"] = np.zeros(n, dtype=bool)
    outputs = [grpcclient.InferRequestedOutput("label")]
    bar = tqdm(total=n, desc=spec.get("desc", ""), unit="req", leave=False, file=sys.stderr)
    t0 = time.perf_counter()
    for i in range(n):
        if rate > 0 and (wait := t0 + i / rate - time.perf_counter()) > 0:
            time.sleep(wait)
        inp = grpcclient.InferInput("image", [1, *images.shape[1:]], "UINT8")
        inp.set_data_from_numpy(images[i : i + 1])
        for k in orders[i % len(orders)]:
            params = {"gati.caches": bool(targets[k]["caches"])}
            start = time.perf_counter()
            try:
                result = clients[k].infer(model, [inp], outputs=outputs, parameters=params)
            except Exception:  # counted, never fatal: the figures say how many failed
                out[f"{k}/latency_s"][i] = time.perf_counter() - start
                out[f"{k}/error"][i] = True
                continue
            out[f"{k}/latency_s"][i] = time.perf_counter() - start
            out[f"{k}/label"][i] = int(result.as_numpy("label")[0])
            p = result.get_response().parameters
            out[f"{k}/hit"][i] = p["gati.hit"].bool_param if "gati.hit" in p else False
            out[f"{k}/exact_hit"][i] = (
                p["gati.exact_hit"].bool_param if "gati.exact_hit" in p else False
            )
            out[f"{k}/version"][i] = (
                p["gati.bundle_version"].int64_param if "gati.bundle_version" in p else 0
            )
            out[f"{k}/exit_layer"][i] = (
                p["gati.exit_layer"].string_param if "gati.exit_layer" in p else ""
            )
        bar.update()
        if i % 100 == 99:
            recent = slice(i - 99, i + 1)
            bar.set_postfix(
                {k: f"{out[f'{k}/latency_s'][recent].mean() * 1e3:.1f}ms" for k in names},
                refresh=False,
            )
    bar.close()
    for c in clients.values():
        c.close()
    return out


def main(argv: list[str] | None = None) -> int:
    spec = json.loads((argv or sys.argv[1:])[0])
    out = run(spec)
    np.savez(
        spec["out"], **{k: (v.astype(str) if v.dtype == object else v) for k, v in out.items()}
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
