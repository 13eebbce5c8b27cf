"""`gati demo`: the whole stack on this machine, a locality-then-drift stream through it.

Starts broker, Redis, cache, trainer and inference (`gati up`), with no probe bundle at all:
every request first runs the full model, the trainer learns probes from the activation
records and publishes them, and hits appear by themselves. Half-way the working set is
replaced wholesale (drift) and the loop has to recover. Live progress shows hit rate,
latency and agreement with the base model (computed here for every request); every 10th
request is also sent with caches off right after it, so the latency reference shares the
stream's load. The end prints a summary per 1000 requests and writes a report.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import torch
from tqdm import tqdm

from bench.common import summarize, table
from bench.stack import request
from cli.local import down, up
from cli.local.options import UpOptions
from gati import names
from gati.api import grpc_service_pb2_grpc as pb_grpc
from gati.data import load_dataset
from gati.models import load_model
from gati.workloads import make_stream

MODEL = "cifar"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--assets", help="folder with cifar10/test.npz and models/*.th")
    parser.add_argument("--arch", default="resnet56", help="resnet20/32/44/56 or pkg.mod:func")
    parser.add_argument("--weights", help="weights (default: ASSETS/models/ARCH-*.th)")
    parser.add_argument("--data", help="images (default: ASSETS/cifar10/test.npz)")
    parser.add_argument("--requests", type=int, default=6000, help="length of the stream")
    parser.add_argument(
        "--reference-every",
        type=int,
        default=10,
        help="also send every Nth request with caches off, right after it (latency reference)",
    )
    parser.add_argument("--run-dir", default=".gati/demo", help="state, logs and the report")
    parser.add_argument("--seed", type=int, default=0, help="stream seed")


def _paths(args: argparse.Namespace) -> tuple[str, str]:
    assets = Path(args.assets) if args.assets else None
    weights = args.weights or (assets and next((assets / "models").glob(f"{args.arch}-*.th"), None))
    data = args.data or (assets and assets / "cifar10" / "test.npz")
    if not weights or not data:
        raise SystemExit("gati demo: give --assets, or --weights and --data")
    return str(weights), str(data)


def base_labels(arch: str, weights: str, images: np.ndarray) -> np.ndarray:
    model = load_model(arch, weights)
    with torch.inference_mode():
        return np.concatenate(
            [
                model(torch.from_numpy(images[i : i + 500])).argmax(1).numpy()
                for i in range(0, len(images), 500)
            ]
        )


def run(args: argparse.Namespace) -> int:
    weights, data = _paths(args)
    run_dir = Path(args.run_dir).resolve()
    x, y = load_dataset(data)
    stream = make_stream(
        "drift",
        x,
        y,
        args.requests,
        seed=args.seed,
        drift_base="instance-locality",
        drift_every=args.requests // 2,
    )
    print(f"computing the base model's answers for {len(stream)} requests (for agreement)...")
    base = base_labels(args.arch, weights, stream.images)
    state = up.start(
        UpOptions(run_dir=run_dir, weights=Path(weights), arch=args.arch, model=MODEL, port_base=0),
        sys.stdout,
        sys.stderr,
    )
    try:
        address = state.get("inference").address  # type: ignore[union-attr]
        report = _stream(address, stream.images, base, y[stream.source], args.reference_every)
    finally:
        down.stop(run_dir)
    report.update(
        arch=args.arch,
        requests=args.requests,
        workload=f"instance-locality, working set replaced at request {args.requests // 2}",
    )
    _print_summary(report)
    path = _write_report(run_dir, report)
    print(f"\nreport: {path}")
    return 0


def _stream(
    address: str, images: np.ndarray, base: np.ndarray, truth: np.ndarray, every: int
) -> dict:
    """Send the stream; every `every`-th request is sent again at once with caches off, so
    the latency reference is measured beside the stream, under the same load."""
    n = len(images)
    latency, labels, hit = np.zeros(n), np.zeros(n, np.int64), np.zeros(n, bool)
    versions = np.zeros(n, np.int64)
    plain = np.full(n, np.nan)  # caches-off latency of the sampled requests
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        bar = tqdm(range(n), desc="stream", unit="req")
        for i in bar:
            t = time.perf_counter()
            reply = stub.ModelInfer(request(MODEL, images[i][None]), timeout=30)
            latency[i] = time.perf_counter() - t
            labels[i] = np.frombuffer(reply.raw_output_contents[1], dtype=np.int64)[0]
            hit[i] = reply.parameters[names.PARAM_HIT].bool_param
            versions[i] = reply.parameters[names.PARAM_BUNDLE_VERSION].int64_param
            if every and i % every == 0:
                t = time.perf_counter()
                stub.ModelInfer(request(MODEL, images[i][None], caches=False), timeout=30)
                plain[i] = time.perf_counter() - t
            if i % 50 == 49:
                w = slice(max(0, i - 499), i + 1)
                bar.set_postfix(
                    hit=f"{hit[w].mean():.0%}",
                    ms=f"{latency[w].mean() * 1e3:.1f}",
                    agree=f"{(labels[w] == base[w]).mean():.1%}",
                    bundle=f"v{versions[i]}",
                )
    sampled = ~np.isnan(plain)
    windows = []
    for start in range(0, n, 1000):
        w = slice(start, min(start + 1000, n))
        pair = sampled[w]
        windows.append(
            {
                "requests": f"{start}-{w.stop}",
                "hit_rate": float(hit[w].mean()),
                "mean_ms": float(latency[w].mean() * 1e3),
                "speedup": float(plain[w][pair].mean() / latency[w][pair].mean())
                if pair.any()
                else None,
                "agreement": float((labels[w] == base[w]).mean()),
                "bundle": int(versions[w].max()),
            }
        )
    return {
        "caches_off": summarize(plain[sampled]) if sampled.any() else None,
        "caches_on_same_requests": summarize(latency[sampled]) if sampled.any() else None,
        "stream": summarize(latency),
        "hit_rate": float(hit.mean()),
        "agreement": float((labels == base).mean()),
        "top1": float((labels == truth).mean()),
        "base_top1": float((base == truth).mean()),
        "windows": windows,
    }


def _speedup(w: dict) -> str:
    return f"{w['speedup']:.2f}x" if w["speedup"] is not None else "-"


def _print_summary(report: dict) -> None:
    rows = [
        [w["requests"], w["hit_rate"], w["mean_ms"], _speedup(w), w["agreement"], f"v{w['bundle']}"]
        for w in report["windows"]
    ]
    headers = ["requests", "hit rate", "mean ms", "vs caches off", "agreement", "bundle"]
    print("\n" + table(headers, rows))
    print(
        f"\n{_reference(report)}; hit rate {report['hit_rate']:.1%}; agreement "
        f"{report['agreement']:.2%}; top-1 {report['top1']:.2%} "
        f"(base model {report['base_top1']:.2%})"
    )


def _reference(report: dict) -> str:
    off, on = report["caches_off"], report["caches_on_same_requests"]
    if off is None:
        return f"stream {report['stream']['mean_ms']:.2f} ms mean (no caches-off reference)"
    return (
        f"sampled requests: caches off {off['mean_ms']:.2f} ms, on {on['mean_ms']:.2f} ms "
        f"mean ({off['mean_ms'] / on['mean_ms']:.2f}x, {off['n']} pairs)"
    )


def _write_report(run_dir: Path, report: dict) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "demo-report.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# gati demo",
        "",
        f"{report['workload']}, {report['requests']} requests, "
        f"{report['arch']}, starting with no probe bundle.",
        "",
        "| requests | hit rate | mean ms | vs caches off | agreement | bundle |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {w['requests']} | {w['hit_rate']:.1%} | {w['mean_ms']:.2f} | {_speedup(w)} | "
        f"{w['agreement']:.2%} | v{w['bundle']} |"
        for w in report["windows"]
    ]
    lines += ["", _reference(report) + "."]
    path = run_dir / "demo-report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
