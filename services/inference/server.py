"""Wiring of the inference service: models, engine, cache client, records, and the two
transports (gRPC, REST) over one data plane."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from gati import names
from gati.api import grpc_service_pb2, grpc_service_pb2_grpc
from gati.models import load_model
from services.common import cpus
from services.common.grpc_server import GrpcServer, build_server
from services.common.shell import Service, go_live
from services.inference.cache_client import CacheClient
from services.inference.config import InferenceConfig
from services.inference.dataplane import DataPlane
from services.inference.engine import Engine
from services.inference.exact_cache import ExactCache
from services.inference.guard import LiveGuard
from services.inference.learned import LearnedCaches
from services.inference.metrics import InferenceMetrics
from services.inference.payoff import PayoffGuard
from services.inference.record_jobs import RecordSink
from services.inference.served import ServedModel
from services.inference.servicer import InferenceServicer
from services.inference.shadow import ShadowRunner

if TYPE_CHECKING:
    from services.inference.rest import RestServer

log = logging.getLogger(__name__)


@dataclass
class InferenceServer(Service):
    handle: GrpcServer
    engine: Engine
    metrics: InferenceMetrics
    metrics_port: int | None
    cache: CacheClient | None
    recorder: RecordSink | None
    shadow: ShadowRunner | None
    plane: DataPlane
    rest: RestServer | None = None  # None: REST is off (--http-port -1)

    @property
    def http_port(self) -> int | None:
        """The REST port bound (None: REST is off)."""
        return self.rest.port if self.rest is not None else None

    def drain(self, grace: float) -> None:
        """Both transports refuse new requests and finish in-flight ones, side by side,
        within `grace` seconds (health NOT_SERVING first, for gRPC and REST alike)."""
        self.metrics.threads.close()  # the REST loop and the rest end on purpose from here on
        self.handle.set_serving(False)
        rest = None
        if self.rest is not None:
            rest = threading.Thread(target=self._stop_rest, args=(grace,), name="rest-drain")
            rest.start()
        self.handle.stop(grace)
        if rest is not None:
            rest.join()

    def _stop_rest(self, grace: float) -> None:
        try:
            self.rest.stop(grace)  # type: ignore[union-attr]
        except Exception:  # the gRPC drain beside it goes on; the loop is closed regardless
            log.exception("REST drain failed")

    def close_clients(self, grace: float = 0.0) -> None:
        self.metrics.threads.close()  # the threads end on purpose from here on
        if self.shadow is not None:
            self.shadow.close()
        if self.recorder is not None:
            self.recorder.close()  # type: ignore[attr-defined]
        if self.cache is not None:
            self.cache.close()


def load_models(config: InferenceConfig) -> dict[str, ServedModel]:
    models = {}
    for spec in config.model_specs():
        model = load_model(spec.arch, spec.weights, config.device)
        with torch.inference_mode():  # warm-up: first calls allocate and pick kernels
            for batch in (1, 4):
                model(model.example_input(batch).to(config.device))
        models[spec.name] = ServedModel(spec.name, model)
        log.info(
            "model %s: %s, %d cut points, fingerprint %s",
            spec.name,
            spec.arch,
            len(model.cut_names),
            model.fingerprint()[:12],
        )
    return models


def build(config: InferenceConfig) -> InferenceServer:
    """Load the models and start serving (health SERVING once everything is up)."""
    # the relay's cores are worked out before pinning narrows what this process may use
    relay_cpus = config.relay_cpus or (cpus.rest(cpus.parse(config.cpus)) if config.cpus else "")
    cpus.pin(config.cpus, "inference service")
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    log.info("torch intra-op threads: %d", torch.get_num_threads())
    server, handle = build_server(
        config.host,
        config.port,
        config.workers,
        config.max_message_bytes,
        (names.HEALTH_INFERENCE,),
        (grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,),
        config.server_credentials(),
    )
    metrics = InferenceMetrics()
    models = load_models(config)
    cache = None
    if config.cache_address:
        cache = CacheClient(
            config.cache_address,
            {n: m.model for n, m in models.items()},
            metrics,
            config.plan_refresh_seconds,
            config.max_message_bytes,
            max_rows=config.max_batch,
            relay_cpus=relay_cpus,
            tls=config.client_tls(),
        )
    recorder: RecordSink | None = None
    if config.kafka_bootstrap:
        from services.inference.recorder import Recorder

        recorder = Recorder(config, metrics, background_cpus=relay_cpus)
    guard = LiveGuard(config.agreement_target, metrics)
    record_layers = {
        n: Engine.record_indices(m.model, config.record_layers) for n, m in models.items()
    }
    shadow = None
    if cache is not None and config.shadow_fraction > 0:
        shadow = ShadowRunner(
            config.shadow_fraction,
            config.shadow_inflight,
            metrics,
            guard,
            recorder,
            record_layers if recorder is not None else None,
            background_cpus=relay_cpus,
        )
    engine = Engine(
        models,
        metrics,
        cache=LearnedCaches(
            cache,
            guard,
            PayoffGuard(metrics, config.payoff_min_lookups, config.payoff_retry_seconds)
            if config.payoff_min_lookups > 0
            else None,
            shadow,
        )
        if cache is not None and config.caches  # caches off: the engine never asks for a plan
        else None,
        exact=ExactCache(config.exact_cache_entries) if config.exact_cache_entries > 0 else None,
        recorder=recorder,
        max_batch=config.max_batch,
        record_layers=config.record_layers,
    )
    plane = DataPlane(engine, metrics, live=lambda: _live(handle), ready=lambda: _ready(handle))
    grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
        InferenceServicer(plane), server
    )
    rest = None
    if config.http_port >= 0:
        from services.inference.rest import RestServer  # aiohttp only where REST is served

        rest = RestServer(
            plane,
            config.host,
            config.http_port,
            config.workers,
            config.max_message_bytes,
            config.ssl_context(),  # HTTPS under the gRPC port's TLS settings
        )
        metrics.threads.watch("rest-loop", rest.thread)
    server.start()
    metrics_port = go_live(  # a dead recorder, shadow pool, cache or REST thread: NOT_SERVING
        handle,
        metrics,
        config.host,
        config.metrics_port,
        "inference service",
        f", REST {rest.port if rest is not None else 'off'}, models: {', '.join(models)}; "
        f"{config.tls_summary()}, {config.signing_summary()}",
        logger=log,
    )
    return InferenceServer(
        handle, engine, metrics, metrics_port, cache, recorder, shadow, plane, rest
    )


def _live(handle: GrpcServer) -> bool:
    """gRPC health's overall status ("") is SERVING: what REST and ServerLive report."""
    return handle.wanted and not handle.failing()


def _ready(handle: GrpcServer) -> bool:
    """gRPC health's service name is SERVING: what REST and ServerReady report."""
    return _live(handle) and not handle.unready()
