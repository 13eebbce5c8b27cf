"""Settings of `gati serve cache` (flags, GATI_* environment, or a --config file)."""

from __future__ import annotations

from dataclasses import dataclass

from gati import names
from gati.config import require, setting
from gati.signing import SigningSettings
from gati.store import RedisSettings
from services.common.tls import TlsSettings


@dataclass(frozen=True)
class CacheConfig(RedisSettings, TlsSettings, SigningSettings):
    """The cache service's own settings, with Redis, TLS and signing ones (inherited: one
    name, help and check in every service)."""

    host: str = setting("0.0.0.0", "address to bind")
    port: int = setting(names.CACHE_PORT, "gRPC port (0 picks a free one)")
    metrics_port: int = setting(names.CACHE_METRICS_PORT, "Prometheus port (0 picks, -1 disables)")
    models: tuple[str, ...] = setting((), "models to hold bundles for (empty: every announced one)")
    refresh_seconds: float = setting(2.0, "re-read bundle pointers this often (pub/sub can lose)")
    redis_timeout_seconds: float = setting(
        2.0, "Redis socket timeout (a dead Redis never hangs us)"
    )
    redis_backoff_max_seconds: float = setting(
        5.0, "longest wait between retries while Redis is down"
    )
    state_entries: int = setting(100000, "per-request states kept (oldest dropped first)")
    state_ttl_seconds: float = setting(30.0, "per-request state expires after this")
    cpus: str = setting("", "cores the service runs on, e.g. 1 or 2-3 (empty: any)")
    max_streams: int = setting(
        64, "open Lookup streams allowed at once (one per inference process)"
    )
    stream_idle_seconds: float = setting(600.0, "a Lookup stream silent this long is closed")
    max_message_bytes: int = setting(64 * 1024 * 1024, "largest gRPC message sent or received")
    drain_seconds: float = setting(5.0, "grace period on SIGTERM")
    max_sync_age_seconds: float = setting(
        300.0, "health NOT_SERVING after this long without a Redis sync (0: never)"
    )
    live_rows: int = setting(
        1024, "rows each (model, layer) live memory holds, oldest out (0: off)"
    )
    live_ttl_seconds: float = setting(600.0, "a live memory row no longer answers after this")

    def __post_init__(self) -> None:
        self.check_redis()
        self.check_tls()
        self.check_signing()
        require(0 <= self.port < 65536, "port", f"must be 0..65535, got {self.port}")
        require(self.refresh_seconds > 0, "refresh_seconds", "must be positive")
        require(self.state_entries >= 1, "state_entries", "must be at least 1")
        require(self.state_ttl_seconds > 0, "state_ttl_seconds", "must be positive")
        require(self.max_streams >= 1, "max_streams", "must be at least 1")
        require(self.live_rows >= 0, "live_rows", "must be at least 0 (0: off)")
        require(self.live_ttl_seconds > 0, "live_ttl_seconds", "must be positive")
        require(self.stream_idle_seconds > 0, "stream_idle_seconds", "must be positive")
        require(self.redis_timeout_seconds > 0, "redis_timeout_seconds", "must be positive")
        require(self.redis_backoff_max_seconds > 0, "redis_backoff_max_seconds", "must be positive")
        require(self.max_message_bytes >= 1024, "max_message_bytes", "must be at least 1024")
        require(
            self.max_sync_age_seconds == 0 or self.max_sync_age_seconds > self.refresh_seconds,
            "max_sync_age_seconds",
            "must exceed refresh_seconds (a healthy sync is that old between timer ticks), or be 0",
        )
