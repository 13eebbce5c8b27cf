"""Where offline records come from: a range of a dataset, or a window of a stream over it.

`load_records` collects `Records` (gati.probes.fitting.rows) from the model over images: either
a range of a dataset (every image once, in order) or a window of a workload stream built over
that range (`Stream`): fit on one window, evaluate on the next, with the same stream. Groups
are the dataset index of each request (an image recurs in `instance-locality`; its errors are
correlated).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gati.data.cifar import load_dataset
from gati.models import StagedModel
from gati.probes.fitting.collect import cached_collect
from gati.probes.fitting.rows import Records
from gati.workloads import make_stream


@dataclass(frozen=True)
class Stream:
    """A window of a workload stream of `requests` requests built over the images."""

    workload: str
    requests: int = 8000
    seed: int = 0
    start: int = 0  # first request of the window
    stop: int | None = None  # end of the window (exclusive; None: the stream's end)


def load_records(
    model: StagedModel,
    data: str,
    start: int = 0,
    stop: int | None = None,
    *,
    stream: Stream | None = None,
    activations_dir: str | None = None,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
    progress: bool = True,
) -> Records:
    """Images start..stop of `data` in order (or the `stream` window over them), passed
    through `transform` ([N, H, W, C] uint8 -> the same: the base model labels any input, so
    altered copies are free extra distillation data). `activations_dir` keeps collected
    activations, so later fits and evals skip the model."""
    x, y = load_dataset(Path(data), start, stop)
    if transform is not None:
        x = transform(x)
    if stream is None:
        acts, logits = cached_collect(model, x, activations_dir, progress=progress)
        span = np.arange(start, start + len(x))
        description = f"{data}[{start}:{start + len(x)}]"
        return Records(acts, logits, groups=span, labels=y, description=description)
    s = make_stream(stream.workload, x, y, stream.requests, stream.seed)
    lo, hi = stream.start, stream.requests if stream.stop is None else stream.stop
    if not 0 <= lo < hi <= len(s):
        raise ValueError(f"window {lo}:{hi} outside the stream of {len(s)} requests")
    if activations_dir:  # cache the whole stream once: fit and eval windows then slice it
        acts, logits = cached_collect(model, s.images, activations_dir, progress=progress)
        acts, logits = {c: a[lo:hi] for c, a in acts.items()}, logits[lo:hi]
    else:
        acts, logits = cached_collect(model, s.images[lo:hi], None, progress=progress)
    return Records(
        acts,
        logits,
        groups=start + s.source[lo:hi],
        labels=y[s.source[lo:hi]],
        seen=np.isin(s.source[lo:hi], s.source[:lo]),
        description=f"{stream.workload} requests {lo}:{hi} of {stream.requests} "
        f"(seed {stream.seed}) over {data}[{start}:{start + len(x)}]",
    )
