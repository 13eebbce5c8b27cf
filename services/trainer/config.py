"""Settings of `gati serve trainer` (flags, GATI_* environment, or a --config file)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gati import names
from gati.config import require
from gati.probes.calibration import MODES as CALIBRATION_MODES
from gati.probes.selectors import FIT_SELECTORS

if TYPE_CHECKING:
    from gati.probes.fit import FitConfig

# Valid values kept here because their modules import torch, which `gati serve trainer --help`
# should not pay for; tests/trainer/test_config.py checks they match gati.probes.
VARIANTS = ("linear", "mlp", "conv", "knn")  # gati.probes.variants.VARIANTS
COST_MODES = ("local", "remote")  # gati.probes.costs.MODES
RTT_MS, SEND_MS = 0.6, 0.25  # gati.probes.costs.DEFAULT_RTT_MS, DEFAULT_SEND_MS


def _f(default, help_text: str):
    return field(default=default, metadata={"help": help_text})


@dataclass(frozen=True)
class TrainerConfig:
    host: str = _f("0.0.0.0", "address to bind (health only)")
    port: int = _f(names.TRAINER_PORT, "gRPC health port (0 picks a free one)")
    metrics_port: int = _f(names.TRAINER_METRICS_PORT, "Prometheus port (0 picks, -1 disables)")
    kafka_bootstrap: str = _f("127.0.0.1:9092", "Kafka bootstrap servers")
    records_topic: str = _f(names.ACTIVATIONS_TOPIC, "Kafka topic of activation records")
    group_id: str = _f(names.TRAINER_GROUP, "Kafka consumer group")
    redis_url: str = _f("redis://127.0.0.1:6379/0", "Redis receiving the probe bundles")
    redis_password: str | None = _f(None, "Redis AUTH password (or in redis_url)")
    model: str | None = _f(None, "served model name the trainer learns for")
    arch: str | None = _f(None, "its architecture (for cut shapes and fingerprint)")
    weights: str | None = _f(None, "its weights")
    window_records: int = _f(4000, "labelled records kept per model")
    window_seconds: float = _f(
        600.0, "records older than this (before the newest) leave the window"
    )
    min_records: int = _f(1500, "labelled records needed before the first fit")
    retrain_every: int = _f(500, "retrain after this many new labelled records")
    retrain_seconds: float = _f(30.0, "retrain at least this often when labelled records arrived")
    holdout_fraction: float = _f(0.25, "newest share of the window held out to compare bundles")
    min_gain: float = _f(0.02, "relative speedup a candidate needs over the current bundle")
    agreement_target: float = _f(0.99, "served agreement with the base model to hold")
    # --- fitting (gati.probes.fit.FitConfig) ---
    variants: tuple[str, ...] = _f(("linear", "mlp"), "probe variants tried per cut")
    layers: tuple[str, ...] = _f((), "candidate cuts (empty: every cut the records carry)")
    selector: str = _f(
        "logistic",
        "selector: logistic (novelty features), max-softmax, or auto (per cut, the faster)",
    )
    calibration: str = _f("empirical", "threshold calibration: empirical or ltt")
    margin: float = _f(0.005, "empirical calibration aims at agreement_target + margin")
    max_probes: int = _f(8, "most active probes in a plan")
    memory_size: int = _f(2048, "novelty memory entries per active cut")
    epochs: int = _f(30, "distillation epochs from scratch")
    warm_epochs: int = _f(10, "distillation epochs when warm-started")
    group_neighbours: bool = _f(True, "calibrate by neighbourhood groups, not single requests")
    lookup_mode: str = _f("remote", "cost model of a lookup: remote (cache service) or local")
    rtt_ms: float = _f(RTT_MS, "lookup round trip until live requests have measured it")
    send_ms: float = _f(SEND_MS, "latency one active probe adds to a request (optimizer)")
    threads: int = _f(1, "torch threads for fitting (the machine is shared with serving)")
    cpus: str = _f("", "cores the trainer runs on, kept off the model's core (empty: any)")
    nice: int = _f(10, "niceness added at start, so serving on shared cores goes first (0: none)")
    # --- Kafka ---
    session_timeout_ms: int = _f(6000, "Kafka group session timeout (Tansu joins in ~half)")
    topic_check_seconds: float = _f(5.0, "how often to check the topic (re-created after a loss)")
    drain_seconds: float = _f(5.0, "time to finish the current step on SIGTERM")

    def __post_init__(self) -> None:
        require(0 <= self.port < 65536, "port", f"must be 0..65535, got {self.port}")
        require(0.5 < self.agreement_target < 1.0, "agreement_target", "must be within 0.5..1")
        require(self.window_records >= 100, "window_records", "must be at least 100")
        require(self.window_seconds > 0, "window_seconds", "must be positive")
        require(self.retrain_every >= 1, "retrain_every", "must be at least 1")
        require(self.retrain_seconds > 0, "retrain_seconds", "must be positive")
        require(
            40 <= self.min_records <= self.window_records,
            "min_records",
            f"must be within 40..window_records ({self.window_records})",
        )
        require(
            0.05 <= self.holdout_fraction <= 0.5, "holdout_fraction", "must be within 0.05..0.5"
        )
        require(self.min_gain >= 0, "min_gain", "must be >= 0")
        bad = [v for v in self.variants if v not in VARIANTS]
        require(bool(self.variants) and not bad, "variants", f"valid: {', '.join(VARIANTS)}")
        require(self.selector in FIT_SELECTORS, "selector", f"valid: {', '.join(FIT_SELECTORS)}")
        require(
            self.calibration in CALIBRATION_MODES,
            "calibration",
            f"valid: {', '.join(CALIBRATION_MODES)}",
        )
        require(self.lookup_mode in COST_MODES, "lookup_mode", f"valid: {', '.join(COST_MODES)}")
        require(self.rtt_ms >= 0 and self.send_ms >= 0, "rtt_ms", "lookup costs must be >= 0")
        require(0 <= self.nice <= 19, "nice", "must be within 0..19")
        require(self.max_probes >= 1, "max_probes", "must be at least 1")
        require(self.epochs >= 1 and self.warm_epochs >= 0, "epochs", "epochs >= 1, warm >= 0")
        require(self.threads >= 1, "threads", "must be at least 1")
        require(self.session_timeout_ms >= 1000, "session_timeout_ms", "must be at least 1000")

    def fit_config(self) -> FitConfig:
        from gati.probes.distill import TrainConfig
        from gati.probes.fit import FitConfig

        return FitConfig(
            layers=self.layers or None,
            variants=self.variants,
            train=TrainConfig(
                epochs=self.epochs, warm_epochs=self.warm_epochs, threads=self.threads
            ),
            selector=self.selector,
            calibration=self.calibration,
            margin=self.margin,
            max_probes=self.max_probes,
            memory_size=self.memory_size,
            agreement_target=self.agreement_target,
        )
