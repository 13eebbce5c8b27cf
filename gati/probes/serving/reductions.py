"""Input reductions: what the inference service applies to an activation before sending it.

A probe reads a reduced activation, so little crosses the wire. `poolG` is an adaptive
average pool of a [N, C, H, W] map to a G x G grid, flattened to [N, C*G*G] (channel-major).
When H and W are divisible by G the pool is a plain block mean, so a finer grid can be
reduced further exactly (`refine`): records carry the finest grid any variant needs and the
trainer derives the coarser ones.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

REDUCTIONS = {"pool1": 1, "pool2": 2, "pool4": 4}  # name -> grid side


def grid(name: str) -> int:
    try:
        return REDUCTIONS[name]
    except KeyError:
        raise ValueError(f"unknown reduction {name!r}; valid: {', '.join(REDUCTIONS)}") from None


def reduce(activation: torch.Tensor, name: str) -> torch.Tensor:
    """[N, C, H, W] -> [N, C*G*G] float32 (G from `name`)."""
    g = grid(name)
    if activation.dim() != 4:
        raise ValueError(f"expected a [N, C, H, W] activation, got shape {tuple(activation.shape)}")
    pooled = activation.mean(dim=(2, 3)) if g == 1 else F.adaptive_avg_pool2d(activation, g)
    return pooled.reshape(activation.shape[0], -1).float()


def reduced_size(channels: int, name: str) -> int:
    return channels * grid(name) ** 2


def refine(x: np.ndarray, channels: int, source: str, target: str) -> np.ndarray:
    """[N, C*Gs*Gs] at grid `source` -> [N, C*Gt*Gt] at the coarser grid `target` (exact)."""
    gs, gt = grid(source), grid(target)
    if gs % gt:
        raise ValueError(f"cannot reduce {source} to {target}: {gs} is not a multiple of {gt}")
    n = x.shape[0]
    k = gs // gt
    blocks = x.reshape(n, channels, gt, k, gt, k).astype(np.float32)
    return blocks.mean(axis=(3, 5)).reshape(n, channels * gt * gt)
