"""Settings of `gati serve trainer` (flags, GATI_* environment, or a --config file)."""

from __future__ import annotations

from dataclasses import dataclass, field

from gati import names
from gati.config import require


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
    window_seconds: float = _f(600.0, "records older than this leave the window")
    retrain_every: int = _f(500, "retrain after this many new labelled records")
    retrain_seconds: float = _f(30.0, "retrain at least this often when records arrived")
    agreement_target: float = _f(0.99, "served agreement with the base model to hold")
    session_timeout_ms: int = _f(6000, "Kafka group session timeout (Tansu joins in ~half)")

    def __post_init__(self) -> None:
        require(0 <= self.port < 65536, "port", f"must be 0..65535, got {self.port}")
        require(0.5 < self.agreement_target < 1.0, "agreement_target", "must be within 0.5..1")
        require(self.window_records >= 100, "window_records", "must be at least 100")
        require(self.retrain_every >= 1, "retrain_every", "must be at least 1")
