"""The flags `gati probes fit` and `eval` share: which records, and the cost model.

Records come either from a range of a dataset (`--start/--stop`, every image once, in order)
or from a window of a workload stream built over that range (`--workload`, `--requests`,
`--seed`, `--window-from/--window-to`): fit on one window, evaluate on the next, with the same
stream arguments. The library does the work (`gati.probes.fitting.sources`); this is the glue.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import numpy as np
import torch

from cli.fit_flags import add_flags, from_flags
from gati.models import StagedModel
from gati.probes.fitting.costs import CostModel, measure_stage_ms
from gati.probes.fitting.fit_config import CostConfig, TrainConfig
from gati.probes.fitting.rows import Records
from gati.probes.fitting.sources import Stream, load_records
from gati.workloads import WORKLOADS


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arch", required=True, help="model architecture, e.g. resnet56")
    parser.add_argument("--weights", required=True, help="model weights file")
    parser.add_argument("--data", required=True, help="dataset: npz or CIFAR-10 python archive")
    parser.add_argument("--start", type=int, default=0, help="first image of the range")
    parser.add_argument(
        "--stop",
        type=int,
        default=None,
        help="end of the range (exclusive; default: the end of --data)",
    )
    parser.add_argument(
        "--workload",
        choices=WORKLOADS,
        default=None,
        help="build a request stream over the range instead of using it in order (default: "
        "none, the range in order)",
    )
    parser.add_argument("--requests", type=int, default=8000, help="stream length (--workload)")
    parser.add_argument("--seed", type=int, default=0, help="stream seed (--workload)")
    parser.add_argument(
        "--window-from",
        type=int,
        default=0,
        help="first request of the stream used here (--workload)",
    )
    parser.add_argument(
        "--window-to",
        type=int,
        default=None,
        help="end of the stream window used here (--workload; default: all)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=TrainConfig.threads,
        help="torch threads for the model, and for training in a fit (1: stable timings on "
        "shared cores)",
    )
    parser.add_argument(
        "--activations-dir",
        default=None,
        help="directory keeping collected activations (npz, keyed by model and images), so "
        "later fits and evals skip the model (default: none kept)",
    )


def add_cost_arguments(parser: argparse.ArgumentParser) -> None:
    """The cost model's flags: CostConfig's fields (shared with the trainer) and --stage-reps."""
    group = parser.add_argument_group("cost model (shared with gati serve trainer)")
    add_flags(group, CostConfig)
    group.add_argument(
        "--stage-reps", type=int, default=100, help="repetitions when timing each stage at batch 1"
    )


def records_for(
    args: argparse.Namespace,
    model: StagedModel,
    *,
    start: int | None = None,
    stop: int | None = None,
    data: str | None = None,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Records:
    """The records the flags select, or images start..stop of --data (or of `data`) in order."""
    torch.set_num_threads(args.threads)
    stream = None
    if args.workload is not None and start is None:
        stream = Stream(args.workload, args.requests, args.seed, args.window_from, args.window_to)
    return load_records(
        model,
        data or args.data,
        args.start if start is None else start,
        args.stop if start is None else stop,
        stream=stream,
        activations_dir=args.activations_dir,
        transform=transform,
    )


def cost_from_args(args: argparse.Namespace, model: StagedModel) -> CostModel:
    torch.set_num_threads(args.threads)
    stage_ms = measure_stage_ms(model, reps=args.stage_reps)
    c = from_flags(CostConfig, args)
    return CostModel(tuple(model.cut_names), stage_ms, c.lookup_mode, c.rtt_ms, c.send_ms)
