"""Altered copies of images to distil probes on: the base model labels any input, so every
copy is a free training pair (activations, base answer). Only probe training uses them;
selectors and thresholds are fitted on untouched images, so the calibration still speaks
for real traffic."""

from __future__ import annotations

import numpy as np

from gati.workloads import perturb


def mirror(images: np.ndarray) -> np.ndarray:
    """[N, H, W, C] -> left-right mirrored copies."""
    return np.ascontiguousarray(images[:, :, ::-1])


def perturbed(images: np.ndarray, seed: int) -> np.ndarray:
    """[N, H, W, C] -> one perturbed copy of each (flip, shift, brightness, sensor noise: the
    same camera model as the `instance-locality` workload), reproducible from `seed`."""
    rng = np.random.default_rng(seed)
    return np.stack([perturb(image, rng) for image in images])
