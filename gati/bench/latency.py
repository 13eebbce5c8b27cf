"""`gati bench latency`: one inference service, learned caches off vs on, per workload.

The same stream of requests is sent with `gati.caches=false` and then `true` to one
inference service (with its cache service and Redis in their own processes), by C
closed-loop clients. Agreement is measured against the base model's own answer for every
request (computed in-process beforehand), top-1 against the ground truth.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from gati.bench.common import environment, summarize, table, write_json
from gati.bench.load import Run, closed_loop
from gati.bench.stack import fit_bundle_cli, local_stack, publish, wait_for_bundle
from gati.data import load_dataset
from gati.models import load_model
from gati.workloads import make_stream

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
            args.arch, args.weights, args.data, args.fit_start, args.fit_stop, logs / "bundle"
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
        version = publish(bundle, stack.redis_url, MODEL)  # type: ignore[arg-type]
        delay = wait_for_bundle(stack, MODEL, x[0], version)
        with stack.channel() as channel:
            for name in args.workloads.split(","):
                stream = make_stream(name, x, y, args.requests, seed=args.seed)
                truth = y[stream.source]
                base = base_labels(args.arch, args.weights, stream.images)
                for conc in (int(c) for c in args.concurrency.split(",")):
                    off = closed_loop(
                        channel, MODEL, stream.images, conc, False, f"{name} c={conc} caches off"
                    )
                    on = closed_loop(
                        channel, MODEL, stream.images, conc, True, f"{name} c={conc} caches on"
                    )
                    missed = ~on.hit
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
                        }
                    )
    return {
        "bundle": str(bundle),
        "bundle_in_use_after_s": delay,
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
            ],
            rows,
        )
    )
    write_json(args.json, report)
    return 0
