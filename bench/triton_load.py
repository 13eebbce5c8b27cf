"""The benchmarks' client: the stock tritonclient.grpc, batch 1, one request at a time.

Runs as its own process (`python -m bench.triton_load SPEC_JSON`): tritonclient registers
Triton's `inference` protos in the protobuf descriptor pool, which would clash with gati's
generated stubs in one process, so this module imports neither gati.api nor anything that does.
Images go in blocks of BLOCK: every target answers the block's images one after another
before the next target starts, and the order of the targets cycles through every
permutation from block to block. Load from elsewhere on the machine falls on every target
alike, so their ratios hold while absolute times drift, and within a block each server runs
warm, as a server does that answers all its traffic. Request by request interleaving was not
fair: two targets are one process (caches on and off), so they followed their own process
(weights still in the core's caches) far more often than the separate plain server did,
which then measured 4-10% slower than the same stack with caches off. Writes one npz: per
target, latency, served label, hit, exit layer, bundle version and exact-cache hit per image.
"""

from __future__ import annotations

import itertools
import json
import sys
import time

import numpy as np
import tritonclient.grpc as grpcclient
from tqdm import tqdm

BLOCK = 10  # images per block: each target answers them back to back


def run(spec: dict) -> dict[str, np.ndarray]:
    images = np.load(spec["images"])["x"]
    targets = spec["targets"]  # name -> {"url": ..., "caches": bool}
    model = spec["model"]
    block = int(spec.get("block", BLOCK))
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
    inputs = []
    for i in range(n):
        inp = grpcclient.InferInput("image", [1, *images.shape[1:]], "UINT8")
        inp.set_data_from_numpy(images[i : i + 1])
        inputs.append(inp)
    bar = tqdm(total=n, desc=spec.get("desc", ""), unit="req", leave=False, file=sys.stderr)
    for b, lo in enumerate(range(0, n, block)):
        hi = min(lo + block, n)
        for k in orders[b % len(orders)]:
            for i in range(lo, hi):
                _infer(clients[k], model, inputs[i], outputs, bool(targets[k]["caches"]), out, k, i)
        bar.update(hi - lo)
        if hi % 100 < block:
            recent = slice(max(0, hi - 100), hi)
            bar.set_postfix(
                {k: f"{out[f'{k}/latency_s'][recent].mean() * 1e3:.1f}ms" for k in names},
                refresh=False,
            )
    bar.close()
    for c in clients.values():
        c.close()
    return out


def _infer(client, model, inp, outputs, caches: bool, out: dict, k: str, i: int) -> None:
    """One request to target k for image i; its latency and what it answered go into out."""
    start = time.perf_counter()
    try:
        result = client.infer(model, [inp], outputs=outputs, parameters={"gati.caches": caches})
    except Exception:  # counted, never fatal: the figures say how many failed
        out[f"{k}/latency_s"][i] = time.perf_counter() - start
        out[f"{k}/error"][i] = True
        return
    out[f"{k}/latency_s"][i] = time.perf_counter() - start
    out[f"{k}/label"][i] = int(result.as_numpy("label")[0])
    p = result.get_response().parameters
    out[f"{k}/hit"][i] = p["gati.hit"].bool_param if "gati.hit" in p else False
    out[f"{k}/exact_hit"][i] = p["gati.exact_hit"].bool_param if "gati.exact_hit" in p else False
    out[f"{k}/version"][i] = (
        p["gati.bundle_version"].int64_param if "gati.bundle_version" in p else 0
    )
    out[f"{k}/exit_layer"][i] = p["gati.exit_layer"].string_param if "gati.exit_layer" in p else ""


def main(argv: list[str] | None = None) -> int:
    spec = json.loads((argv or sys.argv[1:])[0])
    out = run(spec)
    np.savez(
        spec["out"], **{k: (v.astype(str) if v.dtype == object else v) for k, v in out.items()}
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
