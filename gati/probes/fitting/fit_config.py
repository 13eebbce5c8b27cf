"""A fit's settings, declared once: names, defaults, help and checks.

`gati probes fit` makes every field a flag (cli/fit_flags.py); `gati serve trainer`'s config
inherits these classes, so each setting has one name, one default and one check wherever it
is set (a fit flag, a trainer flag, GATI_* environment, a config file). Before this, the two
sides kept their own copies and drifted apart (selector, calibration, margin, variants).

Torch-free on purpose: `gati serve trainer --help` imports it and should not pay for torch.
The modules that build what the names stand for (variants, reductions, costs) import their
names from here; tests/probes/test_fit_config.py checks they still match.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from gati.config import check_choices, require, setting
from gati.probes.fitting.calibration import MODES as CALIBRATION_MODES
from gati.probes.serving.selectors import FIT_SELECTORS

VARIANT_NAMES = ("linear", "mlp", "conv", "knn")  # gati.probes.serving.variants.VARIANTS
REDUCTION_NAMES = ("pool1", "pool2", "pool4")  # gati.probes.serving.reductions.REDUCTIONS
MEMORY_ROWS = ("train", "window")
LOOKUP_MODES = ("local", "remote")  # gati.probes.fitting.costs.MODES

# Remote lookup costs measured on this project's 2-core machine with client, inference and
# cache service co-located (docs/cache.md, "Where the time goes"): `gati bench rtt` gave a
# p50 round trip of 0.46-0.56 ms; `gati bench latency` gave 0.26 ms of miss-path latency per
# active probe (the send itself is ~0.09 ms; the rest is the cache service and gRPC threads
# competing for the same cores). The trainer replaces the round trip with the one measured on
# live requests; pass --rtt-ms / --send-ms for a machine whose figures differ.
DEFAULT_RTT_MS = 0.6
DEFAULT_SEND_MS = 0.25


@dataclass(frozen=True)
class TrainConfig:
    """How probes are distilled (gati.probes.fitting.distill)."""

    epochs: int = setting(30, "distillation epochs from scratch")
    warm_epochs: int = setting(
        10, "distillation epochs when every probe of a stack was warm-started (0: reuse them)"
    )
    temperature: float = setting(
        6.0, "distillation temperature: softens the base model's scores (the paper used 6)"
    )
    alpha: float = setting(0.5, "weight of the KL term; 1 - alpha goes to CE on the base label")
    batch_size: int = setting(128, "distillation batch size")
    lr: float = setting(3e-3, "Adam learning rate (cosine decay to 0.05x over the run)")
    weight_decay: float = setting(1e-4, "Adam weight decay")
    hidden: int = setting(64, "mlp variant: hidden units")
    filters: int = setting(
        16, "conv variant: 3x3 filters (128 for fits on 10k+ rows: docs/probes.md 9.2)"
    )
    threads: int = setting(
        1, "torch threads for the model and for training (tiny ops thrash on shared cores)"
    )
    seed: int = setting(0, "seed of the split, the selector folds and distillation")

    def __post_init__(self) -> None:
        require(0.0 <= self.alpha <= 1.0, "alpha", f"must be within 0..1, got {self.alpha}")
        require(self.temperature > 0, "temperature", f"must be positive, got {self.temperature}")
        require(self.epochs >= 1, "epochs", f"must be at least 1, got {self.epochs}")
        require(self.warm_epochs >= 0, "warm_epochs", f"must be >= 0, got {self.warm_epochs}")
        require(self.batch_size >= 1, "batch_size", f"must be at least 1, got {self.batch_size}")
        require(self.threads >= 1, "threads", f"must be at least 1, got {self.threads}")


@dataclass(frozen=True)
class FitConfig(TrainConfig):
    """Everything `gati.probes.fitting.fit.fit_bundle` decides with, distillation included.

    Defaults, each chosen once for offline fits and the trainer alike:
    - variants: all four; conv and knn are what won in docs/probes.md section 9, and the
      optimizer weighs every lookup's cost (pass linear,mlp for shorter rounds on busy cores);
    - selector logistic (novelty features), because live traffic drifts: with auto the
      optimizer took calibrated confidence at most cuts, and make demo served 94.9% agreement
      in the 1000 requests after its working set was replaced (98.75% overall), where the
      logistic selector kept 99.8-99.97%; offline on a stationary split `--selector auto`
      answers more (docs/probes.md section 9);
    - calibration empirical at the target + 0.005: ltt certifies nothing on a window of a few
      dozen recurring images, and empirical at exactly the target lands a few tenths of a
      point below it on new requests (docs/probes.md 9.6 and limits; docs/learning.md).
    """

    layers: tuple[str, ...] | None = setting(
        None, "candidate cuts, comma-separated (default: every cut the records carry)"
    )
    variants: tuple[str, ...] = setting(
        VARIANT_NAMES, f"probe variants tried per cut, comma-separated: {', '.join(VARIANT_NAMES)}"
    )
    selector: str = setting(
        "logistic",
        "auto: per cut the optimizer picks calibrated confidence, + class offsets, or the "
        "learned selector with novelty features; logistic: always the latter; max-softmax: "
        "calibrated confidence only (the baseline)",
        FIT_SELECTORS,
    )
    novelty: bool = setting(True, "learned selectors read nearest-neighbour (novelty) features")
    class_features: bool = setting(
        True, "learned selectors may add per-class offsets (class-conditional thresholds)"
    )
    memory_size: int = setting(
        2048, "novelty memory entries per active cut (the most recent rows; 0: none)"
    )
    # On instance-locality "window" was faster (2.55x vs 1.92x) but one window fell to 98.4%
    # agreement: it serves what calibration did not see (docs/probes.md, section 9.4).
    memory_rows: str = setting(
        "train",
        "rows the shipped novelty memories hold: train (as calibrated) or window (every row, "
        "so recurring inputs held out of training become familiar too)",
        MEMORY_ROWS,
    )
    memory_reduction: str = setting(
        "pool2", "novelty memory grid (coarsened to the probe's input if finer)", REDUCTION_NAMES
    )
    knn: int = setting(5, "neighbours a novelty memory (and the knn variant) reads")
    agreement_target: float = setting(
        0.99, "served agreement with the base model to hold, over the whole cascade"
    )
    calibration: str = setting(
        "empirical",
        "empirical: the calibration rows' agreement >= target + margin; ltt: agreement >= "
        "target with probability >= 1 - delta (docs/probes.md section 4)",
        CALIBRATION_MODES,
    )
    delta: float = setting(0.1, "ltt: allowed chance that agreement falls below the target")
    margin: float = setting(0.005, "empirical: calibrate to the agreement target + margin")
    new_fraction: float = setting(
        0.2, "share of groups held out of probe training (stand-ins for new inputs)"
    )
    calib_fraction: float = setting(0.4, "share of the remaining requests sent to calibration")
    select_fraction: float = setting(
        0.5, "share of calibration groups fitting selectors and choosing the plan"
    )
    memory_budget_mb: float = setting(
        64.0, "MB a plan may hold: probes, selectors and novelty memories"
    )
    max_probes: int = setting(8, "most active probes in a plan")
    plan_min_gain: float = setting(
        0.01, "a plan must beat 'no caches' by this share of the full model's latency"
    )
    selector_folds: int = setting(5, "cross-fitting folds when comparing selector options")
    plan_rounds: int = setting(3, "optimizer rounds re-rating candidates at the calibrated lam")
    prune: bool = setting(True, "drop active probes that do not pay, one at a time")
    lookup_reps: int = setting(100, "timing repetitions per candidate lookup")
    # The live memory rule per active layer (gati.probes.fitting.live_calibration): calibrated by
    # replaying the window in order through a memory of `live_capacity` rows, as the cache
    # service will hold it; keys at `live_reduction` (coarsened to the probe's if finer).
    live: bool = setting(
        True,
        "ship a live memory rule per active layer: answer a request whose live-k nearest "
        "recent requests share one base label within a radius calibrated by replaying the "
        "fit's rows in order (radius 0 where that would miss the agreement target)",
    )
    live_k: int = setting(5, "live memory: neighbours that must agree")
    live_reduction: str = setting(
        "pool1", "live memory keys' grid (coarsened to the probe's input if finer)", REDUCTION_NAMES
    )
    live_capacity: int = setting(
        1024, "live memory: recent requests remembered in the replay (as the cache service will)"
    )

    def __post_init__(self) -> None:
        TrainConfig.__post_init__(self)
        if self.layers is not None and not self.layers:  # "" from a flag or the environment
            object.__setattr__(self, "layers", None)
        bad = [v for v in self.variants if v not in VARIANT_NAMES]
        require(
            bool(self.variants) and not bad,
            "variants",
            f"{bad or '()'} invalid; valid: {', '.join(VARIANT_NAMES)}",
        )
        check_choices(self)  # selector, calibration, memory_rows, the reductions
        require(
            0.5 < self.agreement_target < 1.0,
            "agreement_target",
            f"must be within (0.5, 1), got {self.agreement_target}",
        )
        require(0.0 < self.delta < 1.0, "delta", f"must be within (0, 1), got {self.delta}")
        for name in ("new_fraction", "calib_fraction", "select_fraction"):
            require(0.0 <= getattr(self, name) < 1.0, name, "must be within [0, 1)")
        require(self.max_probes >= 1, "max_probes", "must be at least 1")
        require(self.knn >= 1, "knn", "must be at least 1")
        require(self.memory_size >= 0, "memory_size", "must be >= 0")
        require(self.live_k >= 1, "live_k", f"must be at least 1, got {self.live_k}")
        require(
            self.live_capacity >= self.live_k,
            "live_capacity",
            f"must be >= live_k ({self.live_k}), got {self.live_capacity}",
        )

    @property
    def uses_novelty(self) -> bool:
        return self.selector != "max-softmax" and self.novelty and self.memory_size > 0

    @property
    def memory_budget_bytes(self) -> int:
        return int(self.memory_budget_mb * (1 << 20))

    def report(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["layers"] = list(self.layers) if self.layers is not None else None
        d["variants"] = list(self.variants)
        return d


@dataclass(frozen=True)
class CostConfig:
    """Where lookups are assumed to run when plans are costed (fitting.costs.CostModel)."""

    lookup_mode: str = setting(
        "remote",
        "cost model of a lookup: remote (on the cache service, overlapped with compute, as "
        "served) or local (in-process, serial)",
        LOOKUP_MODES,
    )
    rtt_ms: float = setting(
        DEFAULT_RTT_MS,
        "remote: lookup round trip (the trainer uses the one live requests measured, once "
        "there are enough)",
    )
    send_ms: float = setting(
        DEFAULT_SEND_MS, "remote: latency one active probe adds to every request reaching it"
    )

    def __post_init__(self) -> None:
        check_choices(self)  # lookup_mode
        require(self.rtt_ms >= 0, "rtt_ms", f"must be >= 0, got {self.rtt_ms}")
        require(self.send_ms >= 0, "send_ms", f"must be >= 0, got {self.send_ms}")
