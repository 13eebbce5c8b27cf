"""`gati probes fit`: collect activations, train probes, calibrate, optimise, write a bundle.

    gati probes fit --arch resnet56 --weights W.th --data test.npz --start 0 --stop 7000 \\
        --model resnet56 --bundle runs/bundle
Fits on images start..stop; calibration rows are split off inside (gati.probes.fitting.splits) or
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

from cli.fit_flags import add_flags, from_flags
from cli.fit_sources import (
    add_cost_arguments,
    add_source_arguments,
    cost_from_args,
    records_for,
)
from gati.data.augment import mirror, perturbed
from gati.models import StagedModel, load_model
from gati.probes.fitting.fit import fit_bundle
from gati.probes.fitting.fit_config import FitConfig
from gati.probes.fitting.rows import Records
from gati.probes.serving.bundle import Bundle

log = logging.getLogger("gati.probes.fitting.fit")


# Fit settings the command sets under flags of another group: --threads (the source flags';
# the same torch threads train the probes) and --seed (the request stream's; fits use
# FitConfig's default seed).
SET_ELSEWHERE = ("threads", "seed")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_source_arguments(parser)
    parser.add_argument("--bundle", required=True, help="bundle directory to write")
    parser.add_argument(
        "--model",
        default=None,
        help="served model name the bundle is for, as `gati serve inference --model` names it "
        "(default: --arch); `gati probes publish` publishes it under this name",
    )
    parser.add_argument(
        "--bundle-version", type=int, default=1, help="version number written into the bundle"
    )
    parser.add_argument(
        "--previous",
        default=None,
        help="bundle directory to warm-start from (default: train from scratch)",
    )
    parser.add_argument(
        "--calib-start",
        type=int,
        default=None,
        help="calibrate on images calib-start..calib-stop (default: calibration rows split off "
        "the fit's own, see gati.probes.fitting.splits)",
    )
    parser.add_argument(
        "--calib-stop",
        type=int,
        default=None,
        help="end of the calibration range (exclusive; default: the end of --data)",
    )
    parser.add_argument(
        "--augment-flip",
        action=argparse.BooleanOptionalAction,
        default=False,
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
        "(needs --calib-start; docs/probes.md section 2 says when this is sound; default: none)",
    )
    parser.add_argument(
        "--distil-stop",
        type=int,
        default=None,
        help="use images 0..N of --distil-data (default: all)",
    )
    parser.add_argument(
        "--candidates",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="ship every trained probe in the bundle, inactive (gati probes eval's oracle over "
        "every probe reads them)",
    )
    add_flags(
        parser.add_argument_group("fit settings (shared with gati serve trainer)"),
        FitConfig,
        skip=SET_ELSEWHERE,
    )
    add_cost_arguments(parser)


def config_from_args(args: argparse.Namespace) -> FitConfig:
    return from_flags(FitConfig, args, skip=("seed",))


def served_as(model_name: str, defaulted: bool) -> str:
    """The line that says which served model the bundle is for, before a fit of minutes: a
    bundle published under a name the inference service does not serve is never used."""
    how = "--arch, as --model was not given" if defaulted else "--model"
    return (
        f"bundle for served model {model_name!r} (from {how}): `gati probes publish` puts it "
        "under that name; if `gati serve inference --model` serves another, pass --model NAME "
        "here or to `gati probes publish`"
    )


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    model_name = args.model or args.arch
    print(served_as(model_name, args.model is None))
    model = load_model(args.arch, args.weights)
    previous = Bundle.load(args.previous, model.fingerprint()) if args.previous else None
    cost = cost_from_args(args, model)
    log.info(
        "full model %.3f ms at batch 1 (%d thread(s)); lookups: %s",
        cost.full_ms,
        args.threads,
        cost.describe()["assumes"],
    )
    rec = records_for(args, model)
    parts = [rec, *_distillation_only(args, model)]
    calibration_rows = None
    if args.calib_start is not None:
        cal = records_for(args, model, start=args.calib_start, stop=args.calib_stop)
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
        channels=rec.channels,
        cost=cost,
        model_id=model_name,
        arch=args.arch,
        fingerprint=model.fingerprint(),
        groups=groups,
        calibration_rows=calibration_rows,
        previous=previous,
        config=cfg,
        version=args.bundle_version,
        keep_candidates=args.candidates,
        progress=True,
        log=log.info,
    )
    bundle.save(Path(args.bundle))
    fit = bundle.manifest["fit"]
    print(f"bundle v{bundle.version} -> {args.bundle} ({bundle.nbytes() / 1e6:.2f} MB tensors)")
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
    extras = [records_for(args, model, **fit_range, transform=mirror)] if args.augment_flip else []
    extras += [
        records_for(args, model, **fit_range, transform=partial(perturbed, seed=view))
        for view in range(args.augment_views)
    ]
    if args.distil_data:
        other = records_for(args, model, start=0, stop=args.distil_stop, data=args.distil_data)
        extras.append(replace(other, groups=-1 - other.groups))
    return extras
