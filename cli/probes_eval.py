"""`gati probes eval`: a bundle's cascade on images (or a stream window) it was not fitted on.

    gati probes eval --arch resnet56 --weights W.th --bundle runs/bundle --data test.npz \\
        --start 7000 --stop 10000 --json out.json
Prints a per-layer table (variant, hit rate, agreement among hits, lookup cost, memory), the
cascade (agreement, top-1, hit rate, expected latency and speedup, with the cost model it
assumed), the oracle ceiling, and agreement per window. --json writes the same figures.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from cli.fit_sources import (
    add_cost_arguments,
    add_source_arguments,
    cost_from_args,
    records_for,
)
from gati.models import load_model
from gati.probes.fitting.costs import CostModel
from gati.probes.fitting.evaluate import BundleReport, evaluate_bundle
from gati.probes.serving.bundle import Bundle

log = logging.getLogger("gati.probes.eval")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_source_arguments(parser)
    parser.add_argument(
        "--bundle", required=True, help="bundle directory to evaluate (from gati probes fit)"
    )
    parser.add_argument(
        "--json", default=None, help="also write the figures to this file (default: none)"
    )
    parser.add_argument("--window", type=int, default=1000, help="requests per reported window")
    parser.add_argument(
        "--cost-from-bundle",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="reuse the stage and lookup times measured at fit time (the lookup mode and "
        "remote costs still come from the flags)",
    )
    add_cost_arguments(parser)


def run(args: argparse.Namespace) -> int:
    model = load_model(args.arch, args.weights)
    bundle = Bundle.load(args.bundle, expected_fingerprint=model.fingerprint())
    if args.cost_from_bundle:
        fitted = bundle.manifest.get("fit", {}).get("cost_model")
        if fitted is None:
            raise SystemExit("--cost-from-bundle: the bundle records no cost model")
        cost = CostModel.from_dict(
            {**fitted, "mode": args.lookup_mode, "rtt_ms": args.rtt_ms, "send_ms": args.send_ms}
        )
    else:
        cost = cost_from_args(args, model)
    rec = records_for(args, model)
    log.info("evaluating bundle v%d on %s", bundle.version, rec.description)
    result = evaluate_bundle(
        bundle,
        rec.acts,
        rec.logits,
        cost=cost,
        labels=rec.labels,
        seen=rec.seen,
        window=args.window,
        measure=not args.cost_from_bundle,
    )
    print_report(result, rec.description)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        figures = {**result.to_dict(), "data": rec.description}
        Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


def _fmt(v: object, fmt: str = "{:.4f}") -> str:
    return "-" if v is None else fmt.format(v)


def print_report(r: BundleReport, data: str) -> None:
    print(f"data: {data}")
    assumes = r.cost_model.describe()["assumes"]
    print(f"cost model: {assumes}; full model {r.cascade.full_ms:.3f} ms")
    print(
        f"{'layer':<10} {'variant':<7} {'thresh':>7} {'hit':>7} {'agree@hit':>9} "
        f"{'alone':>7} {'ms':>7} {'params KB':>9} {'mem KB':>7}"
    )
    for row in r.layers:
        print(
            f"{row.layer:<10} {row.variant:<7} {_fmt(row.threshold, '{:.3f}'):>7} "
            f"{_fmt(row.hit_rate):>7} {_fmt(row.agreement_among_hits):>9} "
            f"{_fmt(row.probe_agreement):>7} {_fmt(row.lookup_ms, '{:.4f}'):>7} "
            f"{_fmt((row.param_bytes or 0) / 1024, '{:.1f}'):>9} "
            f"{_fmt((row.memory_bytes or 0) / 1024, '{:.1f}'):>7}"
        )
    if not r.layers:
        print("(empty plan: no caches pay)")
    c, o = r.cascade, r.oracle
    print(
        f"cascade: agreement {_fmt(c.agreement)} (worst window "
        f"{_fmt(c.worst_window_agreement)}), top-1 {_fmt(c.top1)} (base {_fmt(c.base_top1)}),"
        f" hit rate {_fmt(c.hit_rate)}, expected {c.expected_ms:.3f} ms, "
        f"speedup {c.speedup_expected:.2f}x"
    )
    extra = (
        f", over every candidate probe {o.speedup_all_candidates:.2f}x"
        if o.speedup_all_candidates is not None
        else ""
    )
    print(f"oracle: {o.speedup:.2f}x over the plan{extra}")
    print(
        "windows: "
        + " ".join(
            f"{w.start}:{_fmt(w.agreement, '{:.3f}')}/{_fmt(w.speedup_expected, '{:.2f}')}x"
            for w in r.windows
        )
    )
    for name, s in r.seen.by_name() if r.seen is not None else ():
        print(
            f"{name} images: {s.requests} requests, agreement {_fmt(s.agreement)}, "
            f"hit rate {_fmt(s.hit_rate)}"
        )
