"""Where the probes CLI gets its records and its cost model (shared by `fit` and `eval`).

Records come either from a range of a dataset (`--start/--stop`, every image once, in order)
or from a window of a workload stream built over that range (`--workload`, `--requests`,
`--seed`, `--window-from/--window-to`): fit on one window, evaluate on the next, with the same
stream arguments. Groups are the dataset index of each request (an image recurs in
`instance-locality`; its errors are correlated).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gati.data.cifar import load_dataset
from gati.models import StagedModel
from gati.probes.fitting.collect import cached_collect
from gati.probes.fitting.costs import CostModel, measure_stage_ms
from gati.probes.fitting.fit_config import CostConfig, TrainConfig, add_flags, from_flags
from gati.workloads import WORKLOADS, make_stream


@dataclass
class Records:
    acts: dict[str, np.ndarray]  # cut -> [N, C*16] pool4 float16
    logits: np.ndarray  # [N, K] base model
    labels: np.ndarray  # [N] ground truth
    groups: np.ndarray  # [N] dataset index of each request's image
    seen: np.ndarray | None  # [N] bool: image appeared earlier in the stream (workloads)
    description: str


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


def load_records(
    args: argparse.Namespace,
    model: StagedModel,
    *,
    progress: bool = True,
    start: int | None = None,
    stop: int | None = None,
    data: str | None = None,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Records:
    """The records `args` select, or images start..stop of the dataset (or of `data`) in
    order, passed through `transform` ([N, H, W, C] uint8 -> the same: the base model labels
    any input, so altered copies are free extra distillation data)."""
    torch.set_num_threads(args.threads)
    first = args.start if start is None else start
    last = args.stop if start is None else stop
    x, y = load_dataset(Path(data or args.data), first, last)
    if transform is not None:
        x = transform(x)
    if args.workload is None or start is not None:
        acts, logits = cached_collect(model, x, args.activations_dir, progress=progress)
        return Records(
            acts,
            logits,
            y,
            np.arange(first, first + len(x)),
            None,
            f"{data or args.data}[{first}:{first + len(x)}]",
        )
    stream = make_stream(args.workload, x, y, args.requests, args.seed)
    lo, hi = args.window_from, args.requests if args.window_to is None else args.window_to
    if not 0 <= lo < hi <= len(stream):
        raise ValueError(f"window {lo}:{hi} outside the stream of {len(stream)} requests")
    if args.activations_dir:  # cache the whole stream once: fit and eval windows then slice it
        acts, logits = cached_collect(model, stream.images, args.activations_dir, progress=progress)
        acts, logits = {c: a[lo:hi] for c, a in acts.items()}, logits[lo:hi]
    else:
        acts, logits = cached_collect(model, stream.images[lo:hi], None, progress=progress)
    seen = np.isin(stream.source[lo:hi], stream.source[:lo])
    return Records(
        acts,
        logits,
        y[stream.source[lo:hi]],
        first + stream.source[lo:hi],
        seen,
        f"{args.workload} requests {lo}:{hi} of {args.requests} (seed {args.seed}) "
        f"over {args.data}[{first}:{first + len(x)}]",
    )


def cost_from_args(args: argparse.Namespace, model: StagedModel) -> CostModel:
    torch.set_num_threads(args.threads)
    stage_ms = measure_stage_ms(model, reps=args.stage_reps)
    c = from_flags(CostConfig, args)
    return CostModel(tuple(model.cut_names), stage_ms, c.lookup_mode, c.rtt_ms, c.send_ms)


def channels_of(model: StagedModel) -> dict[str, int]:
    return {cut: int(shape[0]) for cut, shape in model.cut_shapes().items()}
