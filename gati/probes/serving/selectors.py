"""Selectors: features of one lookup -> a score; the lookup hits when score > threshold.

Two kinds:
- `max-softmax`: score = the probe's top probability (the simple baseline).
- `logistic`: score = estimated P(probe answer == base answer), a logistic regression on the
  features of `gati.probes.serving.features` (the paper's learned selector, fed more evidence).
  Fitted by Newton's method with an L2 penalty: deterministic, no learning rate, about ten
  iterations on a few thousand rows. Feature standardisation is folded into the weights, so a
  lookup is one dot product.
Thresholds are not chosen here; `gati.probes.fitting.calibration` picks them for the whole cascade.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

SELECTORS = ("max-softmax", "logistic")
FIT_SELECTORS = ("auto", *SELECTORS)  # "auto": fit both, keep the one that saves more


@dataclass(frozen=True)
class Selector:
    kind: str  # "max-softmax" or "logistic"
    features: tuple[str, ...]  # columns the score reads, in order
    w: np.ndarray  # [len(features)] float32 (unused for max-softmax)
    b: float
    # Familiarity gate: score 0 unless nn_logdist < gate, i.e. unless the request lies closer to
    # a remembered one than new inputs do (None: no gate).
    gate: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in SELECTORS:
            raise ValueError(f"unknown selector {self.kind!r}; valid: {', '.join(SELECTORS)}")
        if self.kind == "logistic" and self.w.shape != (len(self.features),):
            raise ValueError(
                f"logistic selector: {len(self.features)} features but weights {self.w.shape}"
            )
        if self.gate is not None and "nn_logdist" not in self.features:
            raise ValueError("a familiarity gate needs the nn_logdist feature")

    def score(self, feats: np.ndarray) -> np.ndarray:
        """[n, F] -> [n] float32 in [0, 1]."""
        if self.kind == "max-softmax":
            return feats[:, self.features.index("conf")]
        z = feats @ self.w + self.b
        out = (1.0 / (1.0 + np.exp(-np.clip(z, -40.0, 40.0)))).astype(np.float32)
        if self.gate is not None:
            out[feats[:, self.features.index("nn_logdist")] >= self.gate] = 0.0
        return out

    def tensors(self) -> dict[str, np.ndarray]:
        if self.kind == "max-softmax":
            return {}
        return {"sel_w": self.w.astype(np.float32), "sel_b": np.array([self.b], np.float32)}

    def manifest(self) -> dict[str, object]:
        return {"kind": self.kind, "features": list(self.features), "gate": self.gate}


def max_softmax() -> Selector:
    return Selector("max-softmax", ("conf",), np.zeros(1, np.float32), 0.0)


def fit_logistic(
    feats: np.ndarray,
    agree: np.ndarray,
    names: Sequence[str],
    *,
    l2: float = 1e-2,
    weights: np.ndarray | None = None,
    units: int | None = None,
    iterations: int = 25,
) -> Selector:
    """Fit P(agree | feats) by penalised Newton steps. feats [n, F], agree [n] bool.

    `weights` [n] lets grouped data count each image once. With one class only (every probe
    answer right, say) the fit still returns finite weights thanks to the penalty. The penalty
    grows as the number of independent `units` (groups, e.g. images) falls below the row
    count: 900 requests of 30 images are not 900 pieces of evidence.
    """
    x = np.asarray(feats, dtype=np.float64)
    y = np.asarray(agree, dtype=np.float64)
    n, f = x.shape
    sw = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    sw = sw * (n / max(sw.sum(), 1e-12))
    mu = (sw[:, None] * x).sum(axis=0) / n
    sd = np.sqrt((sw[:, None] * (x - mu) ** 2).sum(axis=0) / n)
    sd = np.where(sd < 1e-6, 1.0, sd)
    z = np.hstack([(x - mu) / sd, np.ones((n, 1))])  # [n, F+1], bias last
    beta = np.zeros(f + 1)
    prior = np.clip((sw * y).sum() / n, 1e-3, 1 - 1e-3)
    beta[-1] = np.log(prior / (1 - prior))
    units = n if units is None else max(int(units), 1)
    penalty = np.full(f + 1, l2 * n * np.sqrt(max(n / units, 1.0)))
    penalty[-1] = 0.0  # the bias is not shrunk

    def objective(b: np.ndarray) -> float:
        m = z @ b  # log-likelihood via logaddexp: stable for any margin
        nll = (sw * (np.logaddexp(0.0, m) - y * m)).sum()
        return float(nll + 0.5 * (penalty * b * b).sum())

    current = objective(beta)
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(z @ beta, -40, 40)))
        grad = z.T @ (sw * (p - y)) + penalty * beta
        hess = (z * (sw * p * (1 - p))[:, None]).T @ z + np.diag(penalty + 1e-6)
        step = np.linalg.solve(hess, grad)
        t = 1.0  # damped Newton: halve the step until the objective decreases
        while t > 1e-4 and objective(beta - t * step) > current:
            t *= 0.5
        beta = beta - t * step
        previous, current = current, objective(beta)
        if previous - current < 1e-9 * max(1.0, abs(current)):
            break
    w = beta[:f] / sd  # fold the standardisation in
    b = float(beta[-1] - (beta[:f] * mu / sd).sum())
    return Selector("logistic", tuple(names), w.astype(np.float32), b)


def selector_from_manifest(params: dict, roles: dict[str, np.ndarray]) -> Selector:
    kind = params.get("kind")
    names = tuple(params.get("features", ("conf",)))
    if kind == "max-softmax":
        return Selector("max-softmax", names, np.zeros(len(names), np.float32), 0.0)
    if kind == "logistic":
        if "sel_w" not in roles or "sel_b" not in roles:
            raise ValueError("logistic selector needs tensors sel_w and sel_b")
        gate = params.get("gate")
        return Selector(
            "logistic",
            names,
            np.asarray(roles["sel_w"], np.float32),
            float(np.asarray(roles["sel_b"]).reshape(-1)[0]),
            None if gate is None else float(gate),
        )
    raise ValueError(f"unknown selector {kind!r}; valid: {', '.join(SELECTORS)}")
