"""Predictor variants: reduced activation at one cut -> class scores (logits).

Three variants, each tied to the input reduction the inference service applies before sending:
    linear  pool1 (global average, C values)       -> linear                (cheapest)
    mlp     pool2 (2x2 grid, 4C values)            -> hidden ReLU layer -> linear
    conv    pool4 (4x4 grid, 16C values)           -> 3x3 conv, ReLU, 2x2 avg pool -> linear
Every variant first standardises its input (`in_mu`, `in_scale`): activations after ReLU have
very different scales from cut to cut, and one learning rate must fit them all.

Two forms of the same function live here: a stacked torch module that trains G probes of one
shape at once (one per cut of a stage; probes are independent, so stacking only amortises
per-step overhead on 2 CPU cores), and a numpy `Predictor` for lookups, where a torch call's
fixed overhead (~10 us per op) would dominate a 10 us probe.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gati.probes.serving.reductions import grid


@dataclass(frozen=True)
class VariantSpec:
    name: str
    reduction: str  # what the probe reads: "pool1", "pool2" or "pool4"
    roles: tuple[str, ...]  # tensors a bundle must carry for it (besides in_mu/in_scale)


VARIANTS: dict[str, VariantSpec] = {
    "linear": VariantSpec("linear", "pool1", ("w", "b")),
    "mlp": VariantSpec("mlp", "pool2", ("w1", "b1", "w2", "b2")),
    "conv": VariantSpec("conv", "pool4", ("wc", "bc", "w", "b")),
    # No weights to train: the base labels of the nearest remembered requests vote ("Freeze"
    # style). On recurring inputs (instance-locality) it beats a probe fitted to them, and its
    # memory doubles as the selector's novelty memory.
    "knn": VariantSpec(
        "knn", "pool2", ("mem_keys", "mem_labels", "mem_mu", "mem_scale", "knn_meta")
    ),
}
TRAINED = ("linear", "mlp", "conv")  # variants with weights to distil
# A conv probe runs as two dense matrix products when its conv matrix has at most this many
# entries (4 MB of float32): in place, between lookups, each numpy call costs 5-10 us and the
# im2col form takes ten of them; the dense form does 1.8x the multiply-adds, which wins until
# the matrices grow large (measured: 64 channels, 16 filters, one row: 69 -> 23 us).
DENSE_CONV_MAX = 1 << 20
VOTE_PRIOR = 0.1  # knn: pseudo-count per class, so a vote share is never exactly 0 or 1
INPUT_ROLES = ("in_mu", "in_scale")


def spec(name: str) -> VariantSpec:
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown probe variant {name!r}; valid: {', '.join(VARIANTS)}") from None


# ---- torch: stacked modules for training --------------------------------------------------
class StackedLinear(nn.Module):
    """G independent linear probes: x [N, G, D] -> logits [N, G, K]."""

    def __init__(self, g: int, d: int, k: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(g, k, d) * (1.0 / d) ** 0.5)
        self.b = nn.Parameter(torch.zeros(g, k))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("ngd,gkd->ngk", x, self.w) + self.b


class StackedMLP(nn.Module):
    """G independent one-hidden-layer MLPs: x [N, G, D] -> [N, G, H] -> logits [N, G, K]."""

    def __init__(self, g: int, d: int, k: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(g, hidden, d) * (2.0 / d) ** 0.5)
        self.b1 = nn.Parameter(torch.zeros(g, hidden))
        self.w2 = nn.Parameter(torch.randn(g, k, hidden) * (1.0 / hidden) ** 0.5)
        self.b2 = nn.Parameter(torch.zeros(g, k))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(torch.einsum("ngd,ghd->ngh", x, self.w1) + self.b1)
        return torch.einsum("ngh,gkh->ngk", h, self.w2) + self.b2


class StackedConv(nn.Module):
    """G independent conv probes on a 4x4 grid: x [N, G, C*16] -> logits [N, G, K].

    A grouped convolution runs the G probes' 3x3 convs as one op (groups=G).
    """

    def __init__(self, g: int, c: int, k: int, filters: int) -> None:
        super().__init__()
        self.g, self.c, self.f = g, c, filters
        self.wc = nn.Parameter(torch.randn(g * filters, c, 3, 3) * (2.0 / (9 * c)) ** 0.5)
        self.bc = nn.Parameter(torch.zeros(g * filters))
        self.w = nn.Parameter(torch.randn(g, k, filters * 4) * (1.0 / (filters * 4)) ** 0.5)
        self.b = nn.Parameter(torch.zeros(g, k))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        h = x.reshape(n, self.g * self.c, 4, 4)  # channel-major per probe, probes concatenated
        h = F.relu(F.conv2d(h, self.wc, self.bc, padding=1, groups=self.g))  # [N, G*F, 4, 4]
        h = F.avg_pool2d(h, 2).reshape(n, self.g, self.f * 4)  # [N, G, F*2*2]
        return torch.einsum("ngj,gkj->ngk", h, self.w) + self.b


def stacked_module(
    variant: str, g: int, channels: int, k: int, *, hidden: int, filters: int
) -> nn.Module:
    d = channels * grid(spec(variant).reduction) ** 2
    if variant == "linear":
        return StackedLinear(g, d, k)
    if variant == "mlp":
        return StackedMLP(g, d, k, hidden)
    if variant == "conv":
        return StackedConv(g, channels, k, filters)
    raise ValueError(f"unknown probe variant {variant!r}; valid: {', '.join(VARIANTS)}")


def export_probe(module: nn.Module, i: int) -> dict[str, np.ndarray]:
    """Probe i of a stacked module as named float32 arrays (bundle roles)."""
    p = {name: t.detach().cpu().float() for name, t in module.named_parameters()}
    if isinstance(module, StackedConv):
        f = module.f
        return {
            "wc": p["wc"][i * f : (i + 1) * f].numpy().copy(),  # [F, C, 3, 3]
            "bc": p["bc"][i * f : (i + 1) * f].numpy().copy(),  # [F]
            "w": p["w"][i].numpy().copy(),  # [K, F*4]
            "b": p["b"][i].numpy().copy(),  # [K]
        }
    return {name: t[i].numpy().copy() for name, t in p.items()}


@torch.no_grad()
def import_probe(module: nn.Module, i: int, roles: Mapping[str, np.ndarray]) -> bool:
    """Warm start: copy a previous probe's weights into slot i; False if shapes differ."""
    if isinstance(module, StackedConv):
        f = module.f
        targets = {
            "wc": module.wc[i * f : (i + 1) * f],
            "bc": module.bc[i * f : (i + 1) * f],
            "w": module.w[i],
            "b": module.b[i],
        }
    else:
        targets = {name: t[i] for name, t in module.named_parameters()}
    if any(
        name not in roles or tuple(roles[name].shape) != tuple(t.shape)
        for name, t in targets.items()
    ):
        return False
    for name, t in targets.items():
        t.copy_(torch.from_numpy(np.asarray(roles[name], dtype=np.float32)))
    return True


# ---- numpy: the lookup path -----------------------------------------------------------------
class Predictor:
    """One probe for lookups: x [n, D] float32 (already reduced) -> logits [n, K] float32."""

    def __init__(self, variant: str, channels: int, roles: Mapping[str, np.ndarray]) -> None:
        self.variant = spec(variant).name
        self.channels = channels
        self.input_dim = channels * grid(spec(variant).reduction) ** 2
        needs = spec(variant).roles if variant == "knn" else (*INPUT_ROLES, *spec(variant).roles)
        missing = [r for r in needs if r not in roles]
        if missing:
            raise ValueError(f"{variant} probe needs tensors {missing}")
        self.last_query: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        if self.variant == "knn":
            self._init_knn(channels, roles)
            return
        t = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in roles.items()}
        self.in_mu, self.in_scale = t["in_mu"], t["in_scale"]  # [D], [D]
        if self.in_mu.shape != (self.input_dim,) or self.in_scale.shape != (self.input_dim,):
            raise ValueError(
                f"{variant} probe on {channels} channels reads {self.input_dim} values, "
                f"but in_mu/in_scale have shapes {self.in_mu.shape}/{self.in_scale.shape}"
            )
        if self.variant == "linear":
            self.wt, self.b = _t(t["w"], self.input_dim), t["b"]  # [D, K], [K]
            self.num_classes = int(self.b.shape[0])
            self.a, self.c = self._fold(self.wt, self.b)
            self.hidden = None
        elif self.variant == "mlp":
            self.w1t, self.b1 = _t(t["w1"], self.input_dim), t["b1"]  # [D, H], [H]
            self.w2t, self.b2 = _t(t["w2"], t["b1"].shape[0]), t["b2"]  # [H, K], [K]
            self.num_classes = int(self.b2.shape[0])
            self.a, self.c = self._fold(self.w1t, self.b1)
            self.hidden = (self.w2t, self.b2)
        else:
            wc = t["wc"]  # [F, C, 3, 3]
            if wc.ndim != 4 or wc.shape[1:] != (channels, 3, 3):
                raise ValueError(
                    f"conv probe: wc has shape {wc.shape}, expected [F, {channels}, 3, 3]"
                )
            self.filters = wc.shape[0]
            self.wct = np.ascontiguousarray(wc.reshape(self.filters, -1).T)  # [C*9, F]
            self.bc = t["bc"]
            self.wt, self.b = _t(t["w"], self.filters * 4), t["b"]  # [F*4, K], [K]
            self.gather = _im2col_index(channels)  # [16, C*9] into x padded with a zero column
            self.num_classes = int(self.b.shape[0])
            self.a = self.c = self.hidden = None
            if self.input_dim * 16 * self.filters <= DENSE_CONV_MAX:
                conv, pool = (
                    _conv_as_matrix(self.wct, self.gather, self.input_dim),
                    _pool_matrix(self.filters),
                )
                self.a, self.c = self._fold(conv, np.tile(self.bc, 16))
                self.hidden = (np.ascontiguousarray(pool @ self.wt), self.b)
        self.param_bytes = int(sum(v.nbytes for v in t.values()))

    def _fold(self, w: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """((x - mu) * scale) @ w + b as x @ a + c: the standardisation folded into w."""
        a = np.ascontiguousarray(self.in_scale[:, None] * w, dtype=np.float32)
        c = (b - (self.in_mu * self.in_scale) @ w).astype(np.float32)
        return a, c

    def _init_knn(self, channels: int, roles: Mapping[str, np.ndarray]) -> None:
        from gati.probes.serving.features import NoveltyMemory  # features imports nothing from here

        k, num_classes = (int(v) for v in np.asarray(roles["knn_meta"]).reshape(-1)[:2])
        self.memory = NoveltyMemory(
            roles["mem_keys"],
            roles["mem_labels"],
            roles["mem_mu"],
            roles["mem_scale"],
            channels=channels,
            reduction=spec("knn").reduction,
            k=k,
        )
        if self.memory.dim != self.input_dim:
            raise ValueError(
                f"knn memory holds {self.memory.dim} values, probe reads {self.input_dim}"
            )
        self.num_classes = num_classes
        self.param_bytes = int(sum(np.asarray(roles[r]).nbytes for r in spec("knn").roles))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.variant == "knn":
            # Logits = log vote shares of the k nearest remembered requests' base labels.
            q = self.memory.query(x, spec("knn").reduction)
            self.last_query = q  # the selector's novelty features reuse this lookup
            _, near, _ = q
            n = len(near)
            votes = np.full((n, self.num_classes), VOTE_PRIOR, np.float32)
            rows = np.repeat(np.arange(n), near.shape[1])
            labels = near.reshape(-1)
            ok = labels >= 0  # an empty memory answers -1
            np.add.at(votes, (rows[ok], labels[ok]), 1.0)
            return np.log(votes)
        if self.a is not None:  # folded: standardisation, conv and pooling are in the matrices
            h = x @ self.a
            h += self.c
            if self.hidden is None:
                return h
            np.maximum(h, 0.0, out=h)
            w, b = self.hidden
            return h @ w + b
        z = (x - self.in_mu) * self.in_scale  # [n, D]
        if self.variant == "linear":
            return z @ self.wt + self.b
        if self.variant == "mlp":
            h = z @ self.w1t
            h += self.b1
            np.maximum(h, 0.0, out=h)
            return h @ self.w2t + self.b2
        n = z.shape[0]
        # Padding positions of the 3x3 conv point at an appended zero column.
        zp = np.concatenate([z, np.zeros((n, 1), np.float32)], axis=1)  # [n, D+1]
        patches = zp[:, self.gather]  # [n, 16, C*9]
        h = patches @ self.wct  # [n, 16, F]
        h += self.bc
        np.maximum(h, 0.0, out=h)
        # 2x2 average pool over the 4x4 grid: [n, 2, 2, 2, 2, F] (i0, di, j0, dj) -> [n, 2, 2, F]
        h = h.reshape(n, 2, 2, 2, 2, self.filters).mean(axis=(2, 4))
        h = h.transpose(0, 3, 1, 2).reshape(n, self.filters * 4)  # torch's [F, 2, 2] order
        return h @ self.wt + self.b


def _conv_as_matrix(wct: np.ndarray, gather: np.ndarray, input_dim: int) -> np.ndarray:
    """The 3x3 conv on the 4x4 grid as one [D, 16*F] matrix (position-major columns)."""
    f = wct.shape[1]
    m = np.zeros((input_dim + 1, 16, f), np.float64)  # last row: the zero padding
    for p in range(16):
        np.add.at(m[:, p, :], gather[p], wct)
    return m[:input_dim].reshape(input_dim, 16 * f).astype(np.float32)


def _pool_matrix(filters: int) -> np.ndarray:
    """[16*F, F*4]: 2x2 average pool of the 4x4 grid, from position-major to torch's [F, 2, 2]."""
    m = np.zeros((4, 4, filters, filters, 2, 2), np.float32)
    for i in range(4):
        for j in range(4):
            m[i, j, np.arange(filters), np.arange(filters), i // 2, j // 2] = 0.25
    return m.reshape(16 * filters, filters * 4)


def _t(w: np.ndarray, fan_in: int) -> np.ndarray:
    if w.ndim != 2 or w.shape[1] != fan_in:
        raise ValueError(f"weight of shape {w.shape} does not take {fan_in} inputs")
    return np.ascontiguousarray(w.T)


def _im2col_index(channels: int) -> np.ndarray:
    """[16, C*9] indices into a [C*16 + 1] row (last = zero pad) for a 3x3 conv, padding 1."""
    pad = channels * 16
    idx = np.full((4, 4, channels, 3, 3), pad, dtype=np.intp)
    for i in range(4):
        for j in range(4):
            for di in range(3):
                for dj in range(3):
                    y, x = i + di - 1, j + dj - 1
                    if 0 <= y < 4 and 0 <= x < 4:
                        idx[i, j, :, di, dj] = np.arange(channels) * 16 + y * 4 + x
    return idx.reshape(16, channels * 9)


def input_stats(x: np.ndarray, variant: str, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """(in_mu, in_scale) [D] for a variant's standardisation, from training inputs [N, D].

    The conv variant standardises per channel (shared across the grid) so that its weights
    stay translation-equivariant; the others per input value.
    """
    x = x.astype(np.float32)
    if variant == "conv":
        per_c = x.reshape(len(x), channels, -1)
        mu = np.repeat(per_c.mean(axis=(0, 2)), per_c.shape[2])
        sd = np.repeat(per_c.std(axis=(0, 2)), per_c.shape[2])
    else:
        mu, sd = x.mean(axis=0), x.std(axis=0)
    return mu.astype(np.float32), (1.0 / np.maximum(sd, 1e-3)).astype(np.float32)
