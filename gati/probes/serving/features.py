"""Evidence a selector reads: the probe's confidence, the previous cut's answer, and novelty.

Max-softmax confidence alone leaves most of the gain on the table (measured offline):
probes fine-tuned on recent traffic are as confident on new inputs as on recurring ones. So
besides confidence, margin and entropy, a selector may read
- agreement with the previous active cut's probe (kept per request in a `RowState`), and
- novelty: the distance from this request's reduced activation to its nearest neighbours in a
  bounded memory of recent requests (float16, shipped in the bundle), and whether those
  neighbours' *base* labels agree with this probe's answer.

The same functions compute features at fit time (vectorised over thousands of rows) and at
lookup time (one row), so what was calibrated is exactly what is served.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from gati.probes.serving.reductions import grid, refine

BASE_FEATURES = ("conf", "conf_logit", "margin", "entropy")
PREV_FEATURES = ("has_prev", "prev_agree", "prev_conf")
NOVELTY_FEATURES = ("nn_logdist", "nn_agree", "nn1_agree")
CONF_EPS = 1e-6  # conf_logit clips confidence to [eps, 1 - eps] (float32 rounds to 1.0)


def class_features(num_classes: int) -> tuple[str, ...]:
    """One-hot of the probe's answer: a learned per-class offset = class-conditional thresholds."""
    return tuple(f"class_{c}" for c in range(num_classes))


def feature_names(num_classes: int, *, prev: bool, novelty: bool, classes: bool) -> tuple[str, ...]:
    names = list(BASE_FEATURES)
    if prev:
        names += PREV_FEATURES
    if novelty:
        names += NOVELTY_FEATURES
    if classes:
        names += class_features(num_classes)
    return tuple(names)


def softmax(logits: np.ndarray) -> np.ndarray:
    """[n, K] -> [n, K] probabilities (float32, stable)."""
    z = logits - logits.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


@dataclass
class ProbeOutput:
    """What one probe said about n rows."""

    probs: np.ndarray  # [n, K] float32
    label: np.ndarray  # [n] int64
    conf: np.ndarray  # [n] float32, max probability


def probe_output(logits: np.ndarray) -> ProbeOutput:
    probs = softmax(np.asarray(logits, dtype=np.float32))
    label = probs.argmax(axis=1)
    return ProbeOutput(probs, label, probs.max(axis=1))


class NoveltyMemory:
    """Recent requests' reduced activations at one cut (standardised, float16 in the bundle)
    with their base labels; answers nearest-neighbour distance and label agreement.

    keys [M, Dm], labels [M]; a lookup is one [n, Dm] x [Dm, M] product (M <= a few thousand:
    about 0.01-0.02 ms at M = 2000 on a 2-core machine).
    """

    def __init__(
        self,
        keys: np.ndarray,
        labels: np.ndarray,
        mu: np.ndarray,
        scale: np.ndarray,
        *,
        channels: int,
        reduction: str,
        k: int,
    ) -> None:
        self.keys = np.ascontiguousarray(keys, dtype=np.float32)  # [M, Dm]
        self.neg2_keys_t = np.ascontiguousarray(-2.0 * self.keys.T)  # [Dm, M]
        self.sqnorm = (self.keys**2).sum(axis=1)  # [M]
        self.labels = np.asarray(labels, dtype=np.int64)  # [M]
        self.mu = np.asarray(mu, dtype=np.float32)
        self.scale = np.asarray(scale, dtype=np.float32)
        self.channels, self.reduction = channels, reduction
        self.k = max(1, min(int(k), len(self.labels))) if len(self.labels) else 0
        self.dim = self.keys.shape[1]
        if self.labels.shape != (len(self.keys),) or self.mu.shape != (self.dim,):
            raise ValueError(
                f"novelty memory: keys {self.keys.shape}, labels {self.labels.shape} and "
                f"mu {self.mu.shape} do not fit together"
            )

    @classmethod
    def build(
        cls,
        x: np.ndarray,
        labels: np.ndarray,
        *,
        channels: int,
        source: str,
        reduction: str,
        k: int,
        size: int,
        like: NoveltyMemory | None = None,
    ) -> NoveltyMemory:
        """From the most recent `size` rows of x [N, C*Gs*Gs] at reduction `source`;
        standardised like `like` when given (so distances keep their scale)."""
        recent = slice(max(0, len(x) - size), len(x)) if size > 0 else slice(0, 0)
        basis = refine(x, channels, source, reduction)  # [N, Dm]; standardise over all seen
        if like is not None:
            mu, scale = like.mu, like.scale
        else:
            if len(basis):
                mu, sd = basis.mean(axis=0), basis.std(axis=0)
            else:
                mu, sd = np.zeros(basis.shape[1], np.float32), np.ones(basis.shape[1], np.float32)
            scale = (1.0 / np.maximum(sd, 1e-3)).astype(np.float32)
        keys = ((basis[recent] - mu) * scale).astype(np.float16)  # as the bundle stores them
        return cls(keys, labels[recent], mu, scale, channels=channels, reduction=reduction, k=k)

    def tensors(self) -> dict[str, np.ndarray]:
        return {
            "mem_keys": self.keys.astype(np.float16),
            "mem_labels": self.labels.astype(np.int32),
            "mem_mu": self.mu.astype(np.float32),
            "mem_scale": self.scale.astype(np.float32),
        }

    def query(self, x: np.ndarray, source: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """x [n, C*Gs*Gs] at `source` -> (RMS distance to nearest [n], labels of the k nearest
        [n, k], label of the nearest [n])."""
        n = len(x)
        if len(self.labels) == 0:
            return np.full(n, 10.0, np.float32), np.full((n, 1), -1), np.full(n, -1)
        q = x if source == self.reduction else refine(x, self.channels, source, self.reduction)
        q = (q - self.mu) * self.scale  # [n, Dm]
        d2 = q @ self.neg2_keys_t  # [n, M]
        d2 += self.sqnorm  # |q - m|^2 - |q|^2 (|q|^2 added to the minimum below)
        if self.k < d2.shape[1]:
            near = np.argpartition(d2, self.k - 1, axis=1)[:, : self.k]  # [n, k]
        else:
            near = np.broadcast_to(np.arange(d2.shape[1]), (n, d2.shape[1]))
        nearest = d2.argmin(axis=1)  # [n]
        # The nearest distance again, directly: the expansion above cancels catastrophically
        # near 0, exactly where repeated requests sit.
        diff = q - self.keys[nearest]  # [n, Dm]
        dmin = (diff * diff).sum(axis=1)
        dist = np.sqrt(np.maximum(dmin, 0.0) * (1.0 / self.dim)).astype(np.float32)
        return dist, self.labels[near], self.labels[nearest]


@functools.lru_cache(maxsize=256)
def _layout(names: tuple[str, ...]) -> tuple[dict[str, int], int, bool, bool]:
    """Column of each named feature, first class column (-1: none), which groups are read."""
    cols = {name: j for j, name in enumerate(names) if not name.startswith("class_")}
    classes = [j for j, name in enumerate(names) if name.startswith("class_")]
    if classes and [names[j] for j in classes] != [f"class_{i}" for i in range(len(classes))]:
        raise ValueError("class features must be class_0..class_K-1, contiguous and in order")
    if classes and classes != list(range(classes[0], classes[0] + len(classes))):
        raise ValueError("class features must be contiguous")
    return (
        cols,
        classes[0] if classes else -1,
        any(f in cols for f in PREV_FEATURES),
        any(f in cols for f in NOVELTY_FEATURES),
    )


def build_features(
    names: Sequence[str],
    out: ProbeOutput,
    *,
    prev_label: np.ndarray | None = None,  # [n] int, -1 = no previous cut
    prev_conf: np.ndarray | None = None,  # [n] float
    novelty: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,  # NoveltyMemory.query
) -> np.ndarray:
    """[n, len(names)] float32 feature matrix, columns in `names` order.

    Written with few numpy calls: for one row each call costs about a microsecond, which is
    most of a lookup's budget.
    """
    cols, class0, want_prev, want_nov = _layout(tuple(names))
    n, k = out.probs.shape
    feats = np.zeros((n, len(names)), np.float32)
    if "conf" in cols:
        feats[:, cols["conf"]] = out.conf
    if "conf_logit" in cols:  # log-odds: separates 0.999 from 0.99999, where errors hide
        c = np.clip(out.conf, CONF_EPS, 1.0 - CONF_EPS)
        feats[:, cols["conf_logit"]] = np.log(c) - np.log1p(-c)
    if "margin" in cols:
        feats[:, cols["margin"]] = out.conf - np.partition(out.probs, k - 2, axis=1)[:, k - 2]
    if "entropy" in cols:
        p = out.probs + 1e-12
        feats[:, cols["entropy"]] = (p * np.log(p)).sum(axis=1) * (-1.0 / np.log(k))
    if want_prev and prev_label is not None:
        if "has_prev" in cols:
            feats[:, cols["has_prev"]] = prev_label >= 0
        if "prev_agree" in cols:
            feats[:, cols["prev_agree"]] = prev_label == out.label
        if "prev_conf" in cols and prev_conf is not None:
            feats[:, cols["prev_conf"]] = prev_conf
    if want_nov:
        if novelty is None:
            raise ValueError("selector reads novelty features but the layer has no memory")
        dist, near_labels, nearest = novelty
        if "nn_logdist" in cols:
            feats[:, cols["nn_logdist"]] = np.log(dist + 1e-3)
        if "nn_agree" in cols:
            feats[:, cols["nn_agree"]] = (near_labels == out.label[:, None]).mean(axis=1)
        if "nn1_agree" in cols:
            feats[:, cols["nn1_agree"]] = nearest == out.label
    if class0 >= 0:
        feats[np.arange(n), class0 + out.label] = 1.0
    return feats


def memory_from_roles(
    roles: Mapping[str, np.ndarray], params: Mapping[str, object], channels: int
) -> NoveltyMemory:
    return NoveltyMemory(
        roles["mem_keys"],
        roles["mem_labels"],
        roles["mem_mu"],
        roles["mem_scale"],
        channels=channels,
        reduction=str(params["reduction"]),
        k=int(params["k"]),  # type: ignore[call-overload]
    )


def memory_reduction(probe_reduction: str, wanted: str) -> str:
    """The memory reads the coarser of the probe's input and the wanted grid (derivable)."""
    return wanted if grid(wanted) <= grid(probe_reduction) else probe_reduction
