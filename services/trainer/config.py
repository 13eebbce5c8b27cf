"""Settings of `gati serve trainer` (flags, GATI_* environment, or a --config file).

The fit and cost-model settings are inherited from gati.probes.fitting.fit_config, the classes
`gati probes fit` makes its flags from: the same name, default and check on both sides.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from gati import names
from gati.config import require, setting
from gati.probes.fitting.fit_config import CostConfig, FitConfig
from gati.signing import SigningSettings
from gati.store import RedisSettings
from services.common.kafka import KafkaSecurity
from services.common.tls import TlsSettings


@dataclass(frozen=True)
class TrainerConfig(
    FitConfig, CostConfig, RedisSettings, KafkaSecurity, TlsSettings, SigningSettings
):
    """The trainer's own settings, every fit and cost-model setting of `gati probes fit`,
    and the Redis, Kafka, TLS and signing ones (inherited: one name, one default and one
    check wherever they are used)."""

    host: str = setting("0.0.0.0", "address to bind (health only)")
    port: int = setting(names.TRAINER_PORT, "gRPC health port (0 picks a free one)")
    metrics_port: int = setting(
        names.TRAINER_METRICS_PORT, "Prometheus port (0 picks, -1 disables)"
    )
    kafka_bootstrap: str = setting("127.0.0.1:9092", "Kafka bootstrap servers")
    records_topic: str = setting(names.ACTIVATIONS_TOPIC, "Kafka topic of activation records")
    create_topic: bool = setting(
        True,
        "create the records topic if missing (1 partition, replication 1); off in a cluster, "
        "where the topic Job creates it with its replication",
    )
    group_id: str = setting(names.TRAINER_GROUP, "Kafka consumer group")
    model: str | None = setting(
        None,
        "served model name the trainer learns for (records are read and bundles published "
        "under it: the name `gati serve inference --model` serves)",
    )
    arch: str | None = setting(None, "its architecture (for cut shapes and fingerprint)")
    weights: str | None = setting(None, "its weights")
    # 2000, not 4000: a drifted working set leaves the window twice as fast (make demo:
    # 1.08x / 1.20x against 1.03x / 1.12x on two streams; docs/learning.md, "The window")
    window_records: int = setting(2000, "labelled records kept per model")
    window_seconds: float = setting(
        600.0, "records older than this (before the newest) leave the window"
    )
    min_records: int = setting(1500, "labelled records needed before the first fit")
    retrain_every: int = setting(500, "retrain after this many new labelled records")
    retrain_seconds: float = setting(
        30.0, "retrain at least this often when labelled records arrived"
    )
    holdout_fraction: float = setting(
        0.25, "newest share of the window held out to compare bundles"
    )
    min_gain: float = setting(
        0.02, "relative speedup a candidate needs over the current bundle to be published"
    )
    group_neighbours: bool = setting(True, "calibrate by neighbourhood groups, not single requests")
    cpus: str = setting("", "cores the trainer runs on, kept off the model's core (empty: any)")
    nice: int = setting(
        10, "niceness added at start, so serving on shared cores goes first (0: none)"
    )
    # --- Kafka ---
    session_timeout_ms: int = setting(6000, "Kafka group session timeout (Tansu joins in ~half)")
    topic_check_seconds: float = setting(
        5.0, "how often to check the topic (re-created after a loss)"
    )
    drain_seconds: float = setting(5.0, "time to finish the current step on SIGTERM")

    def __post_init__(self) -> None:
        FitConfig.__post_init__(self)
        CostConfig.__post_init__(self)
        self.check_redis()
        self.check_kafka_security()
        self.check_tls()
        self.check_signing()
        require(0 <= self.port < 65536, "port", f"must be 0..65535, got {self.port}")
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
        require(0 <= self.nice <= 19, "nice", "must be within 0..19")
        require(self.session_timeout_ms >= 1000, "session_timeout_ms", "must be at least 1000")

    def fit_config(self) -> FitConfig:
        """The fit settings alone, as `gati.probes.fitting.fit.fit_bundle` takes them."""
        return FitConfig(**{f.name: getattr(self, f.name) for f in fields(FitConfig)})

    def cost_config(self) -> CostConfig:
        return CostConfig(**{f.name: getattr(self, f.name) for f in fields(CostConfig)})
