"""`gati bench latency`: gati against a separate plain server, end to end, per workload.

Three targets answer the same stream from the stock tritonclient, in blocks of 10 images
(bench/triton_load.py says why; the order cycles through every permutation): `plain`,
a separate `gati serve inference` with caches, records and the exact cache off at its best
setting (its defaults); `gati`, the inference service of a stack with its cache service and
Redis, caches on; and `off`, the same stack's service with `gati.caches=false` (the second
column: what the machinery costs when nothing is looked up). Cores are placed as `gati up`
places them. The bundle is published again (a new version) before each workload, so each
starts with every layer on and the pays-for-itself switch judges it on its own traffic.

Also measured in the same run: a bare gRPC bidi ping-pong between two processes (the floor of a
lookup's reply delay), the inference service's own figures of each lookup (critical-path cost on
the model's thread, reply delay in ms and in stages, from its Prometheus histograms), and per
exit cut the mean latency of hits beside the compute floor of that cut (the in-process forward
to the cut plus one probe, measured here). Agreement is against the base model's own answer,
computed in-process beforehand; top-1 against the ground truth.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from bench import rtt
from bench.common import environment, summarize, table, write_json
from bench.histograms import lookup_figures, scrape
from bench.stack import (
    Stack,
    fit_bundle_cli,
    local_stack,
    plain_server,
    publish,
    wait_for_bundle,
)
from gati.data import load_dataset
from gati.models import load_model
from gati.probes.fitting.costs import measure_stage_ms
from gati.workloads import make_stream
from launch.ports import LOCALHOST, free_port
from launch.processes import wait_for_port

MODEL = "bench"
TARGETS = ("plain", "gati", "off")
WINDOW = 1000  # agreement is also judged per window of this many requests
FULL_MODEL = "full model"  # compute_floors' entry for the whole forward pass


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arch", required=True, help="resnet20/32/44/56 or package.module:fn")
    parser.add_argument("--weights", required=True, help="model weights")
    parser.add_argument("--data", required=True, help="npz or CIFAR-10 python archive")
    parser.add_argument("--bundle", help="bundle directory (default: fit one first)")
    parser.add_argument("--fit-start", type=int, default=0, help="images used to fit (start)")
    parser.add_argument("--fit-stop", type=int, default=5000, help="images used to fit (stop)")
    parser.add_argument("--start", type=int, default=5000, help="images measured (start)")
    parser.add_argument("--stop", type=int, default=10000, help="images measured (stop)")
    parser.add_argument("--requests", type=int, default=1000, help="requests per workload")
    parser.add_argument(
        "--workloads",
        default="uniform,class-locality,instance-locality",
        help="comma-separated workloads, each measured on its own stream",
    )
    parser.add_argument("--seed", type=int, default=0, help="stream seed")
    parser.add_argument("--json", metavar="PATH", help="write the figures here as JSON")
    parser.add_argument("--report", help="write a Markdown report here")
    parser.add_argument("--log-dir", help="keep service logs here")
    parser.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="place cores as `gati up` does (both servers); --no-pin leaves every process to "
        "the OS scheduler",
    )


LIVE_HITS = "gati_cache_live_hits_total"  # rows answered from the live memory


# --- in-process references ---------------------------------------------------------------------


def base_labels(arch: str, weights: str, images: np.ndarray) -> np.ndarray:
    model = load_model(arch, weights)
    out = []
    with torch.inference_mode():
        for i in range(0, len(images), 500):
            out.append(model(torch.from_numpy(images[i : i + 500])).argmax(1).numpy())
    return np.concatenate(out)


def compute_floors(arch: str, weights: str, manifest: dict) -> dict[str, float]:
    """Per active cut: in-process batch-1 forward to the cut plus its probe's own cost (ms),
    one torch thread as the services run. The least a hit there could take end to end. Also
    FULL_MODEL: the whole forward pass measured alike (this machine's speed drifts: read the
    floors against it, not against a figure taken at another time)."""
    torch.set_num_threads(1)
    model = load_model(arch, weights)
    stage_ms = measure_stage_ms(model, reps=30)
    probe_ms = {
        (c["layer"], c["variant"]): c["lookup_ms"]
        for c in manifest.get("fit", {}).get("candidates", [])
    }
    floors = {}
    for entry in manifest.get("layers", []):
        cut = model.cut_names.index(entry["layer"])
        probe = probe_ms.get((entry["layer"], entry.get("variant")), 0.0)
        floors[entry["layer"]] = float(sum(stage_ms[: cut + 1]) + probe)
    floors[FULL_MODEL] = float(sum(stage_ms))
    return floors


def pingpong(log_path: Path, requests: int = 1000) -> dict:
    """p50/p99 of a bare gRPC bidi ping-pong with a lookup's message shape, between processes."""
    port = free_port()
    echo = rtt.start_echo(port, log_path)
    try:
        wait_for_port(LOCALHOST, port, 60, echo.proc)
        ms = rtt.measure(f"{LOCALHOST}:{port}", "layer2.1", requests) * 1e3
    finally:
        echo.kill()
    return {"n": len(ms), "p50": float(np.median(ms)), "p99": float(np.percentile(ms, 99))}


# --- the client ---------------------------------------------------------------------------------


def serve_stream(
    images: np.ndarray, plain_port: int, stack: Stack, work: Path, desc: str
) -> dict[str, np.ndarray]:
    """Send `images` to the three targets with the stock tritonclient in its own process."""
    work.mkdir(parents=True, exist_ok=True)
    np.savez(work / "images.npz", x=images)
    gati = f"127.0.0.1:{stack.inference_port}"
    spec = {
        "images": str(work / "images.npz"),
        "model": MODEL,
        "out": str(work / "served.npz"),
        "desc": desc,
        "targets": {
            "plain": {"url": f"127.0.0.1:{plain_port}", "caches": False},
            "gati": {"url": gati, "caches": True},
            "off": {"url": gati, "caches": False},
        },
    }
    argv = [sys.executable, "-m", "bench.triton_load", json.dumps(spec)]
    subprocess.run(argv, check=True, timeout=3600)
    with np.load(work / "served.npz", allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def judge(
    served: dict[str, np.ndarray],
    base: np.ndarray,
    truth: np.ndarray,
    floors: dict[str, float],
) -> dict:
    """The figures of one workload from what the client saw."""
    lat = {t: served[f"{t}/latency_s"] * 1e3 for t in TARGETS}
    hit = served["gati/hit"]
    labels = served["gati/label"]
    agree = labels == base
    windows = [float(agree[i : i + WINDOW].mean()) for i in range(0, len(agree), WINDOW)]
    per_cut = {}
    exits = served["gati/exit_layer"].astype(str)
    order = {cut: i for i, cut in enumerate(floors)}
    for cut in sorted({e for e in exits[hit] if e}, key=lambda c: order.get(c, len(order))):
        m = hit & (exits == cut)
        per_cut[cut] = {
            "hits": int(m.sum()),
            "mean_ms": float(lat["gati"][m].mean()),
            "plain_ms": float(lat["plain"][m].mean()),
            "floor_ms": floors.get(cut),
        }
    miss = ~hit
    return {
        **{t: summarize(lat[t] / 1e3) for t in TARGETS},
        "errors": {t: int(served[f"{t}/error"].sum()) for t in TARGETS},
        "speedup_mean": float(lat["plain"].mean() / lat["gati"].mean()),
        "speedup_p50": float(np.median(lat["plain"]) / np.median(lat["gati"])),
        "speedup_vs_off": float(lat["off"].mean() / lat["gati"].mean()),
        "off_vs_plain": float(lat["plain"].mean() / lat["off"].mean()),
        "miss_ratio": float(lat["gati"][miss].mean() / lat["plain"][miss].mean())
        if miss.any()
        else None,
        "hit_rate": float(hit.mean()),
        "agreement": float(agree.mean()),
        "agreement_min_window": min(windows),
        "top1_plain": float((served["plain/label"] == truth).mean()),
        "top1_gati": float((labels == truth).mean()),
        "per_cut": per_cut,
    }


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
            "--model",
            MODEL,
        )
    )
    manifest = json.loads((bundle / "manifest.json").read_text())
    floors = compute_floors(args.arch, args.weights, manifest)
    results = []
    with (
        local_stack(
            logs / "stack",
            MODEL,
            args.arch,
            args.weights,
            inference_args=("--exact-cache-entries", "0"),
            pin=args.pin,
        ) as stack,
        plain_server(logs / "plain", MODEL, args.arch, args.weights, pin=args.pin) as plain_port,
    ):
        bare = pingpong(logs / "echo.log")
        delay = 0.0
        for name in args.workloads.split(","):
            # The same bundle under a new version for each workload: the pays-for-itself
            # switch judges every workload afresh, not by what the one before it left off.
            version = publish(bundle, stack.redis_url, MODEL)  # type: ignore[arg-type]
            delay = max(delay, wait_for_bundle(stack, MODEL, x[0], version))
            stream = make_stream(name, x, y, args.requests, seed=args.seed)
            base = base_labels(args.arch, args.weights, stream.images)
            before = scrape(stack)
            live_before = stack.metric("cache", LIVE_HITS)
            served = serve_stream(stream.images, plain_port, stack, logs / name, name)
            figures = judge(served, base, y[stream.source], floors)
            figures["lookups"] = lookup_figures(before, scrape(stack))
            # rows the cache service answered from its live memory (all targets: only gati's
            # requests look up, so these are gati's), a share of the workload's requests
            figures["live_hit_rate"] = (stack.metric("cache", LIVE_HITS) - live_before) / len(
                stream.images
            )
            figures["workload"] = name
            results.append(figures)
        payoff_off = stack.metric("inference", "gati_payoff_switched_off_total")
    fit = manifest.get("fit", {})
    return {
        "bundle": str(bundle),
        "bundle_in_use_after_s": delay,  # the longest publish-to-use of the workloads
        "active_probes": [e["layer"] for e in manifest.get("layers", [])],
        "expected_speedup": fit.get("speedup_calibration"),
        "cost_model": fit.get("cost_model"),
        "compute_floor_ms": floors,
        "pingpong_ms": bare,
        "payoff_switched_off": payoff_off,
        "results": results,
        "arch": args.arch,
        "environment": environment(),
    }


def _fmt(v: object, spec: str = "{:.3f}") -> str:
    return "-" if v is None else spec.format(v)


def summary_table(report: dict) -> str:
    rows = []
    for r in report["results"]:
        lk = r["lookups"]
        rows.append(
            [
                r["workload"],
                r["plain"]["mean_ms"],
                r["gati"]["mean_ms"],
                r["off"]["mean_ms"],
                r["speedup_mean"],
                r["speedup_vs_off"],
                r["hit_rate"],
                r.get("live_hit_rate", 0.0),
                r["agreement"],
                r["agreement_min_window"],
                _fmt(r["miss_ratio"]),
                _fmt(lk["lookup_cost_ms"]["p50"]),
                _fmt(lk["reply_ms"]["p50"]),
                _fmt(lk["reply_ms"]["p99"]),
                _fmt(lk["reply_stages"]["p50"], "{:.1f}"),
            ]
        )
    headers = [
        "workload", "plain ms", "gati ms", "off ms", "x plain", "x off", "hits", "live hits",
        "agree", "agree min", "miss/plain", "cost p50", "reply p50", "reply p99", "stages p50",
    ]  # fmt: skip
    return table(headers, rows)


def cut_table(report: dict) -> str:
    rows = [
        [r["workload"], cut, c["hits"], c["mean_ms"], c["plain_ms"], _fmt(c["floor_ms"])]
        for r in report["results"]
        for cut, c in r["per_cut"].items()
    ]
    return table(["workload", "exit cut", "hits", "hit ms", "plain ms", "floor ms"], rows)


def legend(report: dict) -> str:
    bare = report["pingpong_ms"]
    return (
        f"expected speedup (the bundle's fit): {_fmt(report['expected_speedup'], '{:.2f}x')}; "
        f"active cuts: {', '.join(report['active_probes']) or 'none'}; in-process forward "
        f"{report['compute_floor_ms'][FULL_MODEL]:.2f} ms; bare gRPC ping-pong "
        f"p50 {bare['p50']:.3f} ms, p99 {bare['p99']:.3f} ms.\n"
        "x plain: plain server's mean over gati's; x off: the same stack with caches off over "
        "caches on; live hits: rows the cache service answered from its live memory, per request "
        "(a reply can come too late to be used); miss/plain: requests no probe answered, gati "
        "over plain; cost: time a lookup "
        "takes on the model's thread (ms); reply: from the send until the reply was usable (ms, "
        "and in stages computed meanwhile); floor: in-process forward to the cut plus one probe."
    )


def markdown(report: dict) -> str:
    return "\n\n".join(
        [
            f"# gati bench latency: {report['arch']}",
            "```\n" + summary_table(report) + "\n```",
            "```\n" + cut_table(report) + "\n```",
            legend(report),
            f"Measured {report['environment']['time']} at commit "
            f"{report['environment']['commit'][:12]}.",
        ]
    )


def run(args: argparse.Namespace) -> int:
    if args.log_dir:
        report = measure(args, Path(args.log_dir))
    else:
        with tempfile.TemporaryDirectory() as logs:
            report = measure(args, Path(logs))
    print(summary_table(report))
    print()
    print(cut_table(report))
    print(legend(report))
    write_json(args.json, report)
    if args.report:
        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
        Path(args.report).write_text(markdown(report) + "\n")
    return 0
