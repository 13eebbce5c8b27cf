"""`gati bench latency`: one inference service, learned caches off vs on, per workload.

The same stream of requests is sent with `gati.caches=false` and then `true` to one
inference service (with its cache service and Redis in their own processes), by C
closed-loop clients. Agreement is measured against the base model's own answer for every
request (computed in-process beforehand), top-1 against the ground truth.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

import grpc
import numpy as np
import torch

from gati.bench.common import environment, summarize, table, write_json
from gati.bench.load import Run, closed_loop
from gati.bench.stack import Stack, fit_bundle_cli, local_stack, publish, wait_for_bundle
from gati.data import load_dataset
from gati.models import load_model
from gati.workloads import make_stream
from services.inference.metrics import LOOKUP_RTT_BUCKETS

MODEL = "bench"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arch", required=True)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--data", required=True, help="npz or CIFAR-10 python archive")
    parser.add_argument("--bundle", help="bundle directory (default: fit one first)")
    parser.add_argument("--fit-start", type=int, default=0, help="images used to fit (start)")
    parser.add_argument("--fit-stop", type=int, default=5000, help="images used to fit (stop)")
    parser.add_argument("--start", type=int, default=5000, help="images measured (start)")
    parser.add_argument("--stop", type=int, default=10000, help="images measured (stop)")
    parser.add_argument("--requests", type=int, default=1000, help="requests per pass")
    parser.add_argument("--workloads", default="uniform,class-locality,instance-locality")
    parser.add_argument("--concurrency", default="1,4", help="closed-loop clients, e.g. 1,4")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per service")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--log-dir", help="keep service logs here")


def base_labels(arch: str, weights: str, images: np.ndarray) -> np.ndarray:
    model = load_model(arch, weights)
    out = []
    with torch.inference_mode():
        for i in range(0, len(images), 500):
            out.append(model(torch.from_numpy(images[i : i + 500])).argmax(1).numpy())
    return np.concatenate(out)


def empty_plan_overhead(channel: grpc.Channel, images: np.ndarray) -> dict:
    """Caches on with no probe active (before any bundle) against caches off: what the
    machinery alone costs a request. Two alternating rounds, so drifting load hits both."""
    half = max(1, len(images) // 2)
    runs: dict[bool, list[np.ndarray]] = {False: [], True: []}
    for part in (images[:half], images[half:]):
        for caches in (False, True):
            label = f"no probes, caches {'on' if caches else 'off'}"
            runs[caches].append(closed_loop(channel, MODEL, part, 1, caches, label).latency_s)
    off, on = np.concatenate(runs[False]), np.concatenate(runs[True])
    return {
        "caches_off": summarize(off),
        "caches_on": summarize(on),
        "overhead_mean": float(on.mean() / off.mean()),
        "overhead_p50": float(np.median(on) / np.median(off)),
    }


def rtt_buckets(stack: Stack) -> np.ndarray:
    """Cumulative counts of the inference service's lookup round-trip histogram."""
    counts = dict.fromkeys(map(_le, RTT_BOUNDS), 0.0)
    for labels, value in stack.samples("inference", "gati_cache_lookup_rtt_seconds_bucket"):
        if labels.get("le") in counts:
            counts[labels["le"]] += value
    return np.array(list(counts.values()))


def rtt_summary(before: np.ndarray, after: np.ndarray) -> dict:
    """p50 (linear within the bucket) and count of the round trips between two scrapes."""
    counts = after - before
    n = float(counts[-1])
    if n == 0:
        return {"n": 0, "p50_ms": None}
    i = int(np.searchsorted(counts, n / 2))
    lo, lo_count = (RTT_BOUNDS[i - 1], counts[i - 1]) if i else (0.0, 0.0)
    hi = RTT_BOUNDS[i]
    frac = (n / 2 - lo_count) / max(counts[i] - lo_count, 1.0)
    return {"n": int(n), "p50_ms": 1e3 * (lo + frac * (hi - lo)) if hi != math.inf else None}


def _le(bound: float) -> str:
    return "+Inf" if bound == math.inf else repr(float(bound))


RTT_BOUNDS = (*LOOKUP_RTT_BUCKETS, math.inf)


def _side(run: Run, truth: np.ndarray, base: np.ndarray | None) -> dict:
    side = summarize(run.latency_s)
    side.update(
        throughput_rps=run.throughput(), top1=float((run.labels == truth).mean()), errors=run.errors
    )
    if base is not None:
        side.update(hit_rate=float(run.hit.mean()), agreement=float((run.labels == base).mean()))
    return side


def measure(args: argparse.Namespace, logs: Path) -> dict:
    x, y = load_dataset(args.data, args.start, args.stop)
    bundle = (
        Path(args.bundle)
        if args.bundle
        else fit_bundle_cli(
            args.arch,
            args.weights,
            args.data,
            args.fit_start,
            args.fit_stop,
            logs / "bundle",
            "--model-id",
            MODEL,
            *(("--threads", str(args.threads)) if args.threads else ()),
        )
    )
    threads = ("--threads", str(args.threads)) if args.threads else ()
    results = []
    with local_stack(
        logs,
        MODEL,
        args.arch,
        args.weights,
        inference_args=("--exact-cache-entries", "0", *threads),
    ) as stack:
        with stack.channel() as channel:
            empty = empty_plan_overhead(channel, x[: args.requests])
        version = publish(bundle, stack.redis_url, MODEL)  # type: ignore[arg-type]
        delay = wait_for_bundle(stack, MODEL, x[0], version)
        probes = len(json.loads((bundle / "manifest.json").read_text()).get("layers", []))
        with stack.channel() as channel:
            for name in args.workloads.split(","):
                stream = make_stream(name, x, y, args.requests, seed=args.seed)
                truth = y[stream.source]
                base = base_labels(args.arch, args.weights, stream.images)
                for conc in (int(c) for c in args.concurrency.split(",")):
                    off = closed_loop(
                        channel, MODEL, stream.images, conc, False, f"{name} c={conc} caches off"
                    )
                    before = rtt_buckets(stack)
                    on = closed_loop(
                        channel, MODEL, stream.images, conc, True, f"{name} c={conc} caches on"
                    )
                    rtt = rtt_summary(before, rtt_buckets(stack))
                    missed = ~on.hit
                    miss_ms = (on.latency_s[missed].mean() - off.latency_s[missed].mean()) * 1e3
                    results.append(
                        {
                            "workload": name,
                            "concurrency": conc,
                            "caches_off": _side(off, truth, None),
                            "caches_on": _side(on, truth, base),
                            "speedup_mean": float(off.latency_s.mean() / on.latency_s.mean()),
                            "speedup_p50": float(
                                np.median(off.latency_s) / np.median(on.latency_s)
                            ),
                            "miss_overhead": float(
                                on.latency_s[missed].mean() / off.latency_s[missed].mean()
                            )
                            if missed.any()
                            else None,
                            "miss_ms_per_probe": float(miss_ms / probes)
                            if missed.any() and probes
                            else None,
                            "lookup_rtt": rtt,
                        }
                    )
    return {
        "bundle": str(bundle),
        "bundle_in_use_after_s": delay,
        "active_probes": probes,
        "empty_plan": empty,
        "results": results,
        "arch": args.arch,
        "environment": environment(),
    }


def run(args: argparse.Namespace) -> int:
    if args.log_dir:
        report = measure(args, Path(args.log_dir))
    else:
        with tempfile.TemporaryDirectory() as logs:
            report = measure(args, Path(logs))
    rows = []
    for r in report["results"]:
        off, on = r["caches_off"], r["caches_on"]
        rows.append(
            [
                r["workload"],
                r["concurrency"],
                off["mean_ms"],
                on["mean_ms"],
                r["speedup_mean"],
                r["speedup_p50"],
                on["hit_rate"],
                on["agreement"],
                off["top1"],
                on["top1"],
                r["miss_overhead"] if r["miss_overhead"] is not None else "-",
                r["miss_ms_per_probe"] if r["miss_ms_per_probe"] is not None else "-",
                r["lookup_rtt"]["p50_ms"] if r["lookup_rtt"]["p50_ms"] is not None else "-",
            ]
        )
    print(
        table(
            [
                "workload",
                "conc",
                "off ms",
                "on ms",
                "x mean",
                "x p50",
                "hit rate",
                "agreement",
                "top1 off",
                "top1 on",
                "miss ovh",
                "ms/probe",
                "rtt p50",
            ],
            rows,
        )
    )
    empty = report["empty_plan"]
    print(
        f"no probes active, caches on vs off: {empty['overhead_mean']:.3f}x mean, "
        f"{empty['overhead_p50']:.3f}x p50; active probes in the bundle: "
        f"{report['active_probes']}; miss ovh: latency of requests no probe answered, on/off; "
        "ms/probe: what each active probe added to them; rtt p50: lookup round trip seen by "
        "the request path"
    )
    write_json(args.json, report)
    return 0
