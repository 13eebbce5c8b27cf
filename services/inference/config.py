"""Settings of `gati serve inference` (flags, GATI_* environment, or a --config file)."""

from __future__ import annotations

from dataclasses import dataclass

from gati import names
from gati.config import ConfigError, require, setting
from gati.signing import SigningSettings
from services.common.kafka import KafkaSecurity
from services.common.tls import TlsSettings


@dataclass(frozen=True)
class ModelSpec:
    name: str
    arch: str
    weights: str | None

    @classmethod
    def parse(cls, spec: str) -> ModelSpec:
        """`NAME=ARCH@WEIGHTS` (weights optional for user factories)."""
        name, sep, rest = spec.partition("=")
        if not sep or not name or not rest:
            raise ConfigError(f"models: {spec!r} is not NAME=ARCH@WEIGHTS")
        arch, _, weights = rest.rpartition("@") if "@" in rest else (rest, "", "")
        return cls(name, arch, weights or None)


@dataclass(frozen=True)
class InferenceConfig(KafkaSecurity, TlsSettings, SigningSettings):
    """The inference service's own settings, with Kafka, TLS and signing ones (inherited:
    one name, help and check in every service)."""

    host: str = setting("0.0.0.0", "address to bind")
    port: int = setting(names.INFERENCE_PORT, "gRPC port (0 picks a free one)")
    metrics_port: int = setting(
        names.INFERENCE_METRICS_PORT, "Prometheus port (0 picks, -1 disables)"
    )
    http_port: int = setting(
        names.INFERENCE_HTTP_PORT, "REST (HTTP/JSON) port, Triton's (0 picks a free one, -1: off)"
    )
    model: str | None = setting(None, "name of the served model")
    arch: str | None = setting(None, "architecture: resnet20/32/44/56 or package.module:function")
    weights: str | None = setting(None, "path to the model's weights")
    models: tuple[str, ...] = setting((), "more models, comma-separated NAME=ARCH@WEIGHTS")
    device: str = setting("cpu", "torch device: cpu or cuda[:N]")
    threads: int = setting(
        1, "torch intra-op threads (0: torch's default, one per core; 1 is fastest at batch 1)"
    )
    cpus: str = setting("", "cores the model runs on, e.g. 0 or 0-3 (empty: any)")
    relay_cpus: str = setting(
        "", "cores of the lookup relay (empty: the cores not in --cpus, if any)"
    )
    workers: int = setting(8, "worker threads of each transport (gRPC, and REST when on)")
    max_batch: int = setting(256, "largest batch accepted in one request")
    max_message_bytes: int = setting(
        64 * 1024 * 1024, "largest gRPC message sent or received, and REST body"
    )
    drain_seconds: float = setting(10.0, "grace period for in-flight requests on SIGTERM")
    # --- learned caches (cache service) ---
    cache_address: str | None = setting(None, "host:port of the cache service (unset: no caches)")
    caches: bool = setting(True, "use learned caches at all (per request: parameter gati.caches)")
    plan_refresh_seconds: float = setting(1.0, "how often to re-read the cache plan")
    # --- exact-match cache in front of the model ---
    exact_cache_entries: int = setting(10000, "entries of the exact-match response cache (0: off)")
    # --- activation records (Kafka) ---
    kafka_bootstrap: str | None = setting(None, "Kafka bootstrap servers (unset: no records)")
    records_topic: str = setting(names.ACTIVATIONS_TOPIC, "Kafka topic for activation records")
    create_topic: bool = setting(
        True,
        "create the records topic if missing (1 partition, replication 1); off in a cluster, "
        "where the topic Job creates it with its replication",
    )
    record_queue: int = setting(10000, "records buffered before new ones are dropped (counted)")
    record_layers: tuple[str, ...] = setting((), "cut points recorded (empty: every cut point)")
    record_reduction: str = setting("pool4", "reduction of recorded activations")
    shadow_fraction: float = setting(
        0.2, "fraction of hits whose full model runs in the background"
    )
    shadow_inflight: int = setting(1, "most shadow completions running at once")
    agreement_target: float = setting(0.99, "served agreement the live guard holds")
    payoff_min_lookups: int = setting(
        300, "lookups per layer before judging whether it pays for itself (0: never switch off)"
    )
    payoff_retry_seconds: float = setting(
        120.0, "a layer that did not pay is tried again after this"
    )

    def __post_init__(self) -> None:
        self.check_kafka_security()
        self.check_tls()
        self.check_signing()
        require(
            not (self.cache_address and self.tls_cert and not self.tls_ca),
            "tls_ca",
            "serving TLS with a cache_address: set tls_ca too, the CA that verifies the cache "
            "service (lookups would otherwise travel in plaintext)",
        )
        require(0 <= self.port < 65536, "port", f"must be 0..65535, got {self.port}")
        require(-1 <= self.http_port < 65536, "http_port", f"must be -1..65535: {self.http_port}")
        require(self.threads >= 0, "threads", "must be >= 0 (0: torch's default)")
        require(self.workers >= 1, "workers", "must be at least 1")
        require(self.max_batch >= 1, "max_batch", "must be at least 1")
        require(self.max_message_bytes >= 1024, "max_message_bytes", "must be at least 1024")
        require(0.0 <= self.shadow_fraction <= 1.0, "shadow_fraction", "must be within 0..1")
        require(self.record_queue >= 1, "record_queue", "must be at least 1")
        require(self.payoff_min_lookups >= 0, "payoff_min_lookups", "must be >= 0")
        require(self.payoff_retry_seconds > 0, "payoff_retry_seconds", "must be positive")
        require(0.0 < self.agreement_target < 1.0, "agreement_target", "must be within (0, 1)")
        require(bool(self.model_specs()), "model", "serve at least one model (--model, --arch)")

    def model_specs(self) -> list[ModelSpec]:
        specs = []
        if self.model or self.arch:
            require(bool(self.model and self.arch), "model", "--model and --arch go together")
            specs.append(ModelSpec(self.model, self.arch, self.weights))  # type: ignore[arg-type]
        specs += [ModelSpec.parse(s) for s in self.models]
        seen = [s.name for s in specs]
        require(len(seen) == len(set(seen)), "models", f"duplicate model names: {seen}")
        return specs
