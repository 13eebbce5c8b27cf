"""`gati probes fit`: collect activations, train probes, calibrate, optimise, write a bundle.

    gati probes fit --arch resnet56 --weights W.th --data test.npz --start 0 --stop 7000 \\
        --out runs/bundle
Fits on images start..stop; calibration rows are split off inside (see gati.probes.splits) or
given as their own range (--calib-start/--calib-stop). With --workload, fits on a window of a
request stream instead (evaluate on the next window with `gati probes eval`).
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np

from gati.data.augment import mirror, perturbed
from gati.models import StagedModel, load_model
from gati.probes.bundle import Bundle
from gati.probes.distill import TrainConfig
from gati.probes.fit import FitConfig, fit_bundle
from gati.probes.selectors import FIT_SELECTORS
from gati.probes.sources import (
    Records,
    add_cost_arguments,
    add_source_arguments,
    channels_of,
    cost_from_args,
    load_records,
)

log = logging.getLogger("gati.probes.fit")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_source_arguments(parser)
    parser.add_argument("--out", required=True, help="bundle directory to write")
    parser.add_argument(
        "--calib-start",
        type=int,
        default=None,
        help="calibrate on images calib-start..calib-stop instead of a split",
    )
    parser.add_argument("--calib-stop", type=int, default=None)
    parser.add_argument(
        "--augment-flip",
        action="store_true",
        help="also train probes on mirrored fit images (needs --calib-start)",
    )
    parser.add_argument(
        "--augment-views",
        type=int,
        default=0,
        help="also train probes on K perturbed copies of each fit image: flip, shift, "
        "brightness, noise (needs --calib-start)",
    )
    parser.add_argument(
        "--distil-data",
        default=None,
        help="more images (npz) that only train probes, never selectors or thresholds "
        "(needs --calib-start; docs/probes.md section 2 says when this is sound)",
    )
    parser.add_argument(
        "--distil-stop", type=int, default=None, help="use images 0..N of --distil-data"
    )
    parser.add_argument("--model-id", default=None, help="served model name (default: --arch)")
    parser.add_argument("--version", type=int, default=1, help="bundle version number")
    parser.add_argument("--previous", default=None, help="bundle directory to warm-start from")
    parser.add_argument("--layers", default=None, help="candidate cuts, comma-separated")
    parser.add_argument("--variants", default="linear,mlp,conv,knn", help="probe variants to try")
    parser.add_argument(
        "--selector",
        choices=FIT_SELECTORS,
        default="auto",
        help="auto: per cut the optimizer picks calibrated confidence, + class offsets, or the "
        "learned selector with novelty features; logistic: always the latter; max-softmax: "
        "calibrated confidence only (the baseline)",
    )
    parser.add_argument("--no-novelty", action="store_true", help="no nearest-neighbour features")
    parser.add_argument("--no-class-features", action="store_true")
    parser.add_argument("--memory-size", type=int, default=2048, help="novelty memory entries")
    parser.add_argument(
        "--memory-rows",
        choices=("train", "window"),
        default="train",
        help="rows the shipped novelty memories hold",
    )
    parser.add_argument("--memory-reduction", default="pool2", choices=("pool1", "pool2", "pool4"))
    parser.add_argument(
        "--no-live",
        action="store_true",
        help="ship no live memory rule (by default each active layer gets one: answer a request "
        "whose --live-k nearest recent requests share one base label within a radius calibrated "
        "by replaying the fit's rows in order; radius 0 when that would miss --target)",
    )
    parser.add_argument("--live-k", type=int, default=5, help="live memory: neighbours to agree")
    parser.add_argument(
        "--live-capacity",
        type=int,
        default=1024,
        help="live memory: recent requests remembered in the replay (as the cache service will)",
    )
    parser.add_argument(
        "--live-reduction",
        default="pool1",
        choices=("pool1", "pool2", "pool4"),
        help="live memory keys' grid (coarsened to the probe's input if finer)",
    )
    parser.add_argument("--target", type=float, default=0.99, help="cascade agreement target")
    parser.add_argument(
        "--calibration",
        choices=("ltt", "empirical"),
        default="ltt",
        help="ltt: agreement >= target with probability >= 1 - delta (see docs/probes.md); "
        "empirical: the calibration rows' agreement >= target + margin",
    )
    parser.add_argument("--delta", type=float, default=0.1, help="ltt: allowed failure chance")
    parser.add_argument("--margin", type=float, default=0.0, help="empirical: target + margin")
    parser.add_argument("--new-fraction", type=float, default=0.2)
    parser.add_argument("--calib-fraction", type=float, default=0.4)
    parser.add_argument("--select-fraction", type=float, default=0.5)
    parser.add_argument("--max-probes", type=int, default=8)
    parser.add_argument("--memory-budget-mb", type=float, default=64.0)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument(
        "--warm-epochs",
        type=int,
        default=10,
        help="epochs when warm-started from --previous (0: reuse its probes)",
    )
    parser.add_argument("--temperature", type=float, default=6.0)
    parser.add_argument("--alpha", type=float, default=0.5, help="KL weight (1-alpha: CE)")
    parser.add_argument(
        "--filters", type=int, default=TrainConfig.filters, help="conv variant: 3x3 filters"
    )
    parser.add_argument(
        "--hidden", type=int, default=TrainConfig.hidden, help="mlp variant: hidden units"
    )
    parser.add_argument(
        "--no-candidates",
        action="store_true",
        help="do not ship inactive candidate probes in the bundle",
    )
    add_cost_arguments(parser)


def config_from_args(args: argparse.Namespace) -> FitConfig:
    return FitConfig(
        layers=tuple(args.layers.split(",")) if args.layers else None,
        variants=tuple(v for v in args.variants.split(",") if v),
        train=TrainConfig(
            epochs=args.epochs,
            warm_epochs=args.warm_epochs,
            temperature=args.temperature,
            alpha=args.alpha,
            filters=args.filters,
            hidden=args.hidden,
            threads=args.threads,
        ),
        selector=args.selector,
        novelty=not args.no_novelty,
        class_features=not args.no_class_features,
        memory_size=args.memory_size,
        memory_reduction=args.memory_reduction,
        memory_rows=args.memory_rows,
        agreement_target=args.target,
        calibration=args.calibration,
        delta=args.delta,
        margin=args.margin,
        new_fraction=args.new_fraction,
        calib_fraction=args.calib_fraction,
        select_fraction=args.select_fraction,
        max_probes=args.max_probes,
        memory_budget_bytes=int(args.memory_budget_mb * (1 << 20)),
        keep_candidates=not args.no_candidates,
        live=not args.no_live,
        live_k=args.live_k,
        live_capacity=args.live_capacity,
        live_reduction=args.live_reduction,
    )


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    model = load_model(args.arch, args.weights)
    previous = Bundle.load(args.previous, model.fingerprint()) if args.previous else None
    cost = cost_from_args(args, model)
    log.info(
        "full model %.3f ms at batch 1 (%d thread(s)); lookups: %s",
        cost.full_ms,
        args.threads,
        cost.describe()["assumes"],
    )
    rec = load_records(args, model)
    parts = [rec, *_distillation_only(args, model)]
    calibration_rows = None
    if args.calib_start is not None:
        cal = load_records(args, model, start=args.calib_start, stop=args.calib_stop)
        first = sum(len(p.logits) for p in parts)
        calibration_rows = np.arange(first, first + len(cal.logits))
        parts.append(cal)
    acts = {c: np.concatenate([p.acts[c] for p in parts]) for c in rec.acts}
    logits = np.concatenate([p.logits for p in parts])
    groups = np.concatenate([p.groups for p in parts])
    log.info("fitting on %s (%d records)", rec.description, len(logits))
    bundle = fit_bundle(
        acts,
        logits,
        channels=channels_of(model),
        cost=cost,
        model_id=args.model_id or args.arch,
        arch=args.arch,
        fingerprint=model.fingerprint(),
        groups=groups,
        calibration_rows=calibration_rows,
        previous=previous,
        config=cfg,
        version=args.version,
        progress=True,
        log=log.info,
    )
    bundle.save(Path(args.out))
    fit = bundle.manifest["fit"]
    print(f"bundle v{bundle.version} -> {args.out} ({bundle.nbytes() / 1e6:.2f} MB tensors)")
    plan = [f"{e['layer']}:{e['variant']}" for e in bundle.layers]
    print(f"plan: {plan or 'no caches pay'}")
    print(
        "calibration:",
        json.dumps(
            {
                k: fit["calibration"][k]
                for k in ("mode", "agreement", "hit_rate", "units", "requests")
            }
        ),
    )
    for live in fit.get("live", []):
        agreement = live["agreement"] if live["agreement"] is not None else "-"
        print(
            f"live memory {live['layer']}: radius {live['radius']:.4g} ({live['reduction']}, "
            f"k={live['k']}): answers {live['share']:.1%} of {live['rows']} replayed rows at "
            f"agreement {agreement} over {live['units']} units"
            + ("" if live["radius"] > 0 else " (off: no radius reached the target)")
        )
    print(
        f"expected speedup on calibration rows: {fit['speedup_calibration']:.2f}x "
        f"({cost.describe()['assumes']})"
    )
    return 0


def _distillation_only(args: argparse.Namespace, model: StagedModel) -> list[Records]:
    """Records that only train probes: altered copies of the fit images (same image, same
    group) and images of --distil-data (groups of their own, below zero)."""
    wanted = args.augment_flip or args.augment_views or args.distil_data
    if not wanted:
        return []
    if args.calib_start is None or args.workload is not None:
        raise SystemExit(
            "--augment-flip, --augment-views and --distil-data need a dataset range and "
            "--calib-start/--calib-stop (extra rows must never reach calibration)"
        )
    fit_range = {"start": args.start, "stop": args.stop}
    extras = [load_records(args, model, **fit_range, transform=mirror)] if args.augment_flip else []
    extras += [
        load_records(args, model, **fit_range, transform=partial(perturbed, seed=view))
        for view in range(args.augment_views)
    ]
    if args.distil_data:
        other = load_records(args, model, start=0, stop=args.distil_stop, data=args.distil_data)
        extras.append(replace(other, groups=-1 - other.groups))
    return extras
