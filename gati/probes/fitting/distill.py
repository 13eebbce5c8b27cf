"""Distillation: train probes to mimic the base model's soft outputs at a cut.

Loss per probe (the paper's recipe): alpha * T^2 * KL(softmax(base/T) || softmax(probe/T))
+ (1 - alpha) * CE(probe, argmax base). Ground truth is never used: a cache is right when it
agrees with the base model. All probes of one shape (the cuts of one stage) train together as
one stacked module: they are independent, stacking only amortises per-step overhead.
Warm start copies a previous bundle's weights and input statistics (so the copied weights see
inputs scaled as before) and trains fewer epochs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from gati.probes.fitting.fit_config import TrainConfig
from gati.probes.serving.variants import export_probe, import_probe, stacked_module


def distill_loss(
    probe_logits: torch.Tensor, base_logits: torch.Tensor, temperature: float, alpha: float
) -> torch.Tensor:
    """probe_logits [N, G, K], base_logits [N, K] -> scalar (summed over the G probes)."""
    t = temperature
    soft_target = F.softmax(base_logits / t, dim=-1).unsqueeze(1)  # [N, 1, K]
    log_q = F.log_softmax(probe_logits / t, dim=-1)  # [N, G, K]
    kl = (soft_target * (torch.log(soft_target.clamp_min(1e-12)) - log_q)).sum(-1)  # [N, G]
    hard = base_logits.argmax(dim=-1)  # [N]
    ce = F.cross_entropy(
        probe_logits.permute(0, 2, 1),
        hard.unsqueeze(1).expand(-1, probe_logits.shape[1]),
        reduction="none",
    )  # [N, G]
    return (alpha * t * t * kl + (1.0 - alpha) * ce).mean(0).sum()


def train_stack(
    variant: str,
    inputs: np.ndarray,
    base_logits: np.ndarray,
    channels: int,
    cfg: TrainConfig,
    init: Sequence[dict[str, np.ndarray] | None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[dict[str, np.ndarray]]:
    """Train G probes of one variant. inputs [N, G, D] already standardised, base_logits [N, K].

    Returns one dict of predictor tensors (roles) per probe, without in_mu/in_scale.
    `progress(epochs_done)` is called after each epoch.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _train(variant, inputs, base_logits, channels, cfg, init, progress)
    finally:
        torch.set_num_threads(before)


def _train(
    variant: str,
    inputs: np.ndarray,
    base_logits: np.ndarray,
    channels: int,
    cfg: TrainConfig,
    init: Sequence[dict[str, np.ndarray] | None] | None,
    progress: Callable[[int], None] | None,
) -> list[dict[str, np.ndarray]]:
    n, g, _ = inputs.shape
    k = base_logits.shape[1]
    torch.manual_seed(cfg.seed)
    module = stacked_module(variant, g, channels, k, hidden=cfg.hidden, filters=cfg.filters)
    warm = [bool(r is not None and import_probe(module, i, r)) for i, r in enumerate(init or [])]
    epochs = cfg.warm_epochs if warm and all(warm) and len(warm) == g else cfg.epochs
    if epochs == 0:
        return [export_probe(module, i) for i in range(g)]
    x = torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32))
    z = torch.from_numpy(np.ascontiguousarray(base_logits, dtype=np.float32))
    opt = torch.optim.Adam(module.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, math.ceil(n / cfg.batch_size))
    total = epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    module.train()
    for epoch in range(epochs):
        order = torch.randperm(n, generator=gen)
        for s in range(steps_per_epoch):
            idx = order[s * cfg.batch_size : (s + 1) * cfg.batch_size]
            loss = distill_loss(module(x[idx]), z[idx], cfg.temperature, cfg.alpha)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        if progress is not None:
            progress(epoch + 1)
    module.eval()
    return [export_probe(module, i) for i in range(g)]
