"""Wiring of the trainer service: base model, window, Kafka source, learner, Redis, health.

The gRPC server carries only health and reflection (HEALTH_TRAINER): NOT_SERVING until the
base model is loaded and the loop thread runs, then SERVING; NOT_SERVING again, for good, if
the loop thread ever ends (services.common.liveness): restarting is what helps then. A broker
or Redis that is down does not make the trainer unhealthy: it retries, and restarting it would
not help.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import torch

from gati import names
from gati.config import ConfigError, redacted
from gati.models import StagedModel, load_model
from gati.store import BundleStore
from services.common.grpc_server import GrpcServer, build_server
from services.common.shell import Service, go_live
from services.trainer.config import TrainerConfig
from services.trainer.consumer import RecordSource
from services.trainer.learner import Learner
from services.trainer.loop import TrainerLoop
from services.trainer.metrics import TrainerMetrics
from services.trainer.publisher import Publisher
from services.trainer.window import Window

log = logging.getLogger(__name__)


@dataclass
class TrainerServer(Service):
    handle: GrpcServer
    loop: TrainerLoop
    metrics: TrainerMetrics
    metrics_port: int | None
    thread: threading.Thread
    stopping: threading.Event

    def drain(self, grace: float) -> None:
        """Stop the health server at once: no RPC of its own is worth waiting for."""
        self.handle.stop(0.0)

    def close_clients(self, grace: float = 5.0) -> None:
        """Stop the loop (it finishes its step; a running fit may outlast `grace`), close."""
        self.metrics.threads.close()  # the loop ends on purpose from here on
        self.stopping.set()
        self.thread.join(grace)
        if self.thread.is_alive():
            log.warning("trainer loop still busy after %.1fs; leaving it to exit", grace)
            return  # the consumer belongs to that thread; the process exit closes it
        self.loop.source.close()
        self.loop.publisher.close()


def build_loop(config: TrainerConfig, model: StagedModel, metrics: TrainerMetrics) -> TrainerLoop:
    """Everything but the gRPC server (tests drive a loop step by step)."""
    assert config.model is not None
    source = RecordSource(
        config.kafka_bootstrap,
        config.records_topic,
        config.group_id,
        session_timeout_ms=config.session_timeout_ms,
        topic_check_seconds=config.topic_check_seconds,
        create_topic=config.create_topic,
        on_commit_error=metrics.commit_errors.inc,
        on_rejoin=lambda reason: metrics.rejoins.inc() if reason != "start" else None,
        on_error=lambda: metrics.threads.error("trainer"),
        security=config.kafka_options(),
    )
    learner = Learner(
        model,
        config.model,
        config.fit_config(),
        holdout_fraction=config.holdout_fraction,
        min_gain=config.min_gain,
        cost_config=config.cost_config(),
        group=config.group_neighbours,
    )
    keyring = config.keyring()  # None: signing off (nothing signed, nothing checked)
    store = BundleStore(config.redis_url, keyring=keyring, **config.redis_options())
    publisher = Publisher(store, config.model, model.fingerprint(), metrics)
    return TrainerLoop(
        config.model,
        source,
        Window(config.window_records, config.window_seconds),
        learner,
        publisher,
        metrics,
        min_records=config.min_records,
        retrain_every=config.retrain_every,
        retrain_seconds=config.retrain_seconds,
        threads=config.threads,
        keyring=keyring,
    )


def build(config: TrainerConfig) -> TrainerServer:
    """Load the base model, start the loop and the health server (SERVING once running)."""
    if not config.model or not config.arch:
        raise ConfigError("model: the trainer needs --model and --arch (and --weights)")
    torch.set_num_threads(config.threads)
    server, handle = build_server(
        config.host,
        config.port,
        4,
        4 * 1024 * 1024,
        (names.HEALTH_TRAINER,),
        (),
        config.server_credentials(),
    )
    server.start()  # health answers NOT_SERVING while the model loads
    metrics = TrainerMetrics()
    model = load_model(config.arch, config.weights)
    log.info("model %s: %s, fingerprint %s", config.model, config.arch, model.fingerprint()[:12])
    loop = build_loop(config, model, metrics)
    stopping = threading.Event()
    thread = threading.Thread(target=loop.run, args=(stopping,), name="trainer", daemon=True)
    thread.start()
    metrics.threads.watch("trainer", thread)
    metrics_port = go_live(
        handle,
        metrics,
        config.host,
        config.metrics_port,
        f"trainer for {config.model}",
        f": Kafka {config.kafka_bootstrap} topic {config.records_topic} group {config.group_id}"
        f", Redis {redacted(config.redis_url)}; {config.tls_summary()}, "
        f"{config.signing_summary()}",
        logger=log,
    )
    return TrainerServer(handle, loop, metrics, metrics_port, thread, stopping)
