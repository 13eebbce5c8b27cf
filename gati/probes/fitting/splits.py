"""Split a window of records into probe training, selector fitting and threshold calibration.

Calibration must look like the traffic the bundle will serve next: mostly inputs like the
recent ones (for `instance-locality`, the same images again, perturbed) plus inputs never seen
(new images joining the working set). So, by group (image or neighbourhood id):
- `new_fraction` of the groups are held out of probe training entirely: stand-ins for new
  inputs;
- of the remaining requests, `calib_fraction` (chosen per request, so their images may also
  appear in training, as recurring images do) join the calibration pool;
- the calibration pool is split by group into a selector part (fits the learned selector and
  chooses the plan) and a threshold part (only picks thresholds; kept independent of every
  other choice so that the guarantee mode's statement holds).
With no groups every request is its own group.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Split:
    train: np.ndarray  # row indices for probe training (and the novelty memory), time order
    select: np.ndarray  # rows fitting the selectors and choosing the plan
    threshold: np.ndarray  # rows calibrating the thresholds only
    novel: np.ndarray  # [N] bool: the row's group has no row in training (a stand-in for new)

    def sizes(self) -> dict[str, int]:
        return {
            "train": len(self.train),
            "select": len(self.select),
            "threshold": len(self.threshold),
            "novel_select": int(self.novel[self.select].sum()),
            "novel_threshold": int(self.novel[self.threshold].sum()),
        }


def split_by_group(
    groups: np.ndarray, indices: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(indices whose group falls in a random `fraction` of the groups, the rest); sorted."""
    uniq = np.unique(groups[indices])
    picked = rng.permutation(uniq)[: round(fraction * len(uniq))]
    mask = np.isin(groups[indices], picked)
    return np.sort(indices[mask]), np.sort(indices[~mask])


def make_split(
    n: int,
    groups: np.ndarray | None,
    *,
    new_fraction: float,
    calib_fraction: float,
    select_fraction: float,
    seed: int,
    calibration_rows: np.ndarray | None = None,
) -> Split:
    """Rows 0..n-1; when `calibration_rows` is given those form the calibration pool and every
    other row trains probes."""
    rng = np.random.default_rng(seed)
    g = np.arange(n) if groups is None else np.asarray(groups)
    everything = np.arange(n)
    if calibration_rows is not None:
        pool = np.sort(np.asarray(calibration_rows))
        train = np.setdiff1d(everything, pool)
    else:
        held, rest = split_by_group(g, everything, new_fraction, rng)
        chosen = rng.random(len(rest)) < calib_fraction
        train = rest[~chosen]
        pool = np.sort(np.concatenate([held, rest[chosen]]))
    select, threshold = split_by_group(g, pool, select_fraction, rng)
    if len(train) == 0 or len(threshold) == 0:
        raise ValueError(
            f"too few records to fit and calibrate ({n} rows: {len(train)} to train, "
            f"{len(threshold)} to calibrate thresholds)"
        )
    novel = ~np.isin(g, g[train])
    return Split(train, select, threshold, novel)
