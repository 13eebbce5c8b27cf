"""Wiring of the cache service: probe store, Redis refresher, lookup engine, gRPC server.

Order matters for health: the server binds and starts with health NOT_SERVING, the first sync
from Redis runs (a failure is fine: the refresher keeps retrying), then health says SERVING,
with or without a bundle (no bundle means "no plan", which is a valid answer).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from gati import names
from gati.api import cache_pb2, cache_pb2_grpc
from gati.store import BundleStore
from services.cache.config import CacheConfig
from services.cache.live import LiveStore
from services.cache.lookups import LookupEngine
from services.cache.metrics import CacheMetrics
from services.cache.probe_store import ProbeStore
from services.cache.refresher import BundleRefresher
from services.cache.servicer import CacheServicer
from services.cache.states import RowStates
from services.common import cpus
from services.common.grpc_server import AioGrpcServer
from services.common.shell import Service, go_live

log = logging.getLogger(__name__)


@dataclass
class CacheServer(Service):
    handle: AioGrpcServer
    engine: LookupEngine
    probes: ProbeStore
    refresher: BundleRefresher
    store: BundleStore
    metrics: CacheMetrics
    metrics_port: int | None

    def close_clients(self, grace: float = 0.0) -> None:
        """Stop following Redis."""
        self.metrics.threads.close()  # the threads end on purpose from here on
        self.refresher.close()
        self.store.close()


def build(config: CacheConfig) -> CacheServer:
    """Bind, load what Redis holds, start following it, and say SERVING."""
    cpus.pin(config.cpus, "cache service")
    metrics = CacheMetrics()
    probes = ProbeStore(metrics)
    store = BundleStore(
        config.redis_url,
        timeout_s=config.redis_timeout_seconds,
        keyring=config.keyring(),
        **config.redis_options(),
    )
    refresher = BundleRefresher(
        store,
        probes,
        metrics,
        models=config.models,
        refresh_s=config.refresh_seconds,
        backoff_max_s=config.redis_backoff_max_seconds,
    )
    live = None
    if config.live_rows > 0:
        live = LiveStore(
            metrics, config.live_rows, config.live_ttl_seconds, pending=config.state_entries
        )
        metrics.live_bytes.set_function(live.nbytes)
    engine = LookupEngine(
        probes, RowStates(config.state_entries, config.state_ttl_seconds), metrics, live
    )
    handle = AioGrpcServer(
        config.host,
        config.port,
        config.max_message_bytes,
        (names.HEALTH_CACHE,),
        (cache_pb2.DESCRIPTOR.services_by_name["CacheService"].full_name,),
        lambda server: cache_pb2_grpc.add_CacheServiceServicer_to_server(
            CacheServicer(
                engine, config.max_streams, config.stream_idle_seconds, refresher.note_served
            ),
            server,
        ),
        config.server_credentials(),
    )
    if not refresher.sync_once():
        log.warning("no bundles at start: redis %s unusable; retrying", store.shown_url)
    refresher.start()
    refresher.guard_health(handle, config.max_sync_age_seconds)  # stale bundles: NOT_SERVING
    bundles = ", ".join(f"{m} v{probes.version(m)}" for m in probes.models()) or "none yet"
    metrics_port = go_live(
        handle,
        metrics,
        config.host,
        config.metrics_port,
        "cache service",
        f", bundles: {bundles}; {config.tls_summary()}, {config.signing_summary()}",
        logger=log,
    )
    return CacheServer(handle, engine, probes, refresher, store, metrics, metrics_port)
