"""The gati services on one machine: which processes, with which flags, wired how.

`gati up`, the benchmarks and the tests all start services from these descriptions, so the
flags that wire processes together (addresses, the model, cores) are spelled here and
nowhere else; a service's own tuning flags pass through as `extra`. Port numbers come from
launch/ports.py; starting a description is launch/processes.py's `start_healthy`.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from gati import names
from launch.ports import LOCALHOST
from services.common import cpus as cores
from services.common.tls import ClientTls

# The trainer's probe variants under `gati up`: on the one core it shares with the cache
# service, conv and knn variants made rounds 23-32 s against 17-22 s with these two.
UP_VARIANTS = "linear,mlp"
WILDCARD_HOSTS = ("0.0.0.0", "::", "")


def gati_argv(*args: str) -> list[str]:
    """Run the gati CLI with this interpreter (works without the console script on PATH)."""
    return [sys.executable, "-m", "cli.main", *args]


def connect_host(host: str | None) -> str:
    """Where a client on this machine reaches a server bound to `host` (None: the service's
    default, the wildcard)."""
    return LOCALHOST if host is None or host in WILDCARD_HOSTS else host


@dataclass(frozen=True)
class Model:
    """The model a service loads: the name clients send, its architecture, its weights."""

    name: str
    arch: str
    weights: str | Path | None = None  # None only for a user factory (package.module:function)

    def flags(self) -> list[str]:
        weights = [] if self.weights is None else ["--weights", str(self.weights)]
        return ["--model", self.name, "--arch", self.arch, *weights]


@dataclass(frozen=True, kw_only=True)
class Service:
    """One `gati serve KIND` process: where it listens and what it is given."""

    kind: ClassVar[str]
    health: ClassVar[str]  # its grpc.health.v1 service name
    # under TLS, whether it refuses clients without a certificate: inside the mesh yes; the
    # inference endpoint serves clients outside it (tritonclient with ssl=True), server-only
    client_auth: ClassVar[bool] = True

    port: int
    metrics_port: int = -1  # -1: no metrics endpoint
    host: str | None = None  # None: no --host flag (the service's default, all interfaces)
    cpus: str | None = None  # None: no --cpus flag (the service's default, or GATI_CPUS)
    extra: tuple[str, ...] = ()  # more of the service's own flags, passed last
    name: str = ""  # the process's name (and log file); "" is the kind
    log_level: str | None = None
    # None: plaintext. Else the stack's files (launch/certificates.py): the one pair every
    # service serves and shows when it calls another, and the CA all of them trust
    tls: ClientTls | None = None

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", self.kind)

    @property
    def address(self) -> str:
        """host:port of its gRPC endpoint, for clients on this machine."""
        return f"{connect_host(self.host)}:{self.port}"

    @property
    def ports(self) -> dict[str, int]:
        """Its ports by role, as state.json records them."""
        return {"grpc": self.port, "metrics": self.metrics_port}

    @property
    def client_tls(self) -> ClientTls | None:
        """How a client on this machine dials it (None: plaintext): with the stack's pair,
        which mutual TLS inside the stack asks for."""
        return self.tls

    def flags(self) -> list[str]:
        """The flags that wire this kind of service to the others."""
        return []

    def tls_flags(self) -> list[str]:
        if self.tls is None:
            return []
        t = self.tls
        assert t.cert is not None and t.key is not None, "a server needs its certificate"
        mutual = ["--tls-client-auth"] if self.client_auth else []
        return ["--tls-cert", t.cert, "--tls-key", t.key, "--tls-ca", t.ca, *mutual]

    def argv(self) -> list[str]:
        log_level = [f"--log-level={self.log_level}"] if self.log_level else []
        host = [] if self.host is None else ["--host", self.host]
        cpus = [] if self.cpus is None else ["--cpus", self.cpus]
        return gati_argv(
            *log_level, "serve", self.kind, *host, "--port", str(self.port),
            "--metrics-port", str(self.metrics_port), *self.flags(), *self.tls_flags(),
            *cpus, *self.extra,
        )  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class Inference(Service):
    """`gati serve inference`: the model over gRPC (and REST); caches and records if given."""

    kind: ClassVar[str] = "inference"
    health: ClassVar[str] = names.HEALTH_INFERENCE
    client_auth: ClassVar[bool] = False
    model: Model
    http_port: int = -1  # -1: no REST binding
    cache_address: str | None = None  # None: no caches
    kafka_bootstrap: str | None = None  # None: no activation records

    @property
    def ports(self) -> dict[str, int]:
        http = {"http": self.http_port} if self.http_port > 0 else {}
        return {**super().ports, **http}

    def flags(self) -> list[str]:
        flags = [*self.model.flags(), "--http-port", str(self.http_port)]
        if self.cache_address is not None:
            flags += ["--cache-address", self.cache_address]
        if self.kafka_bootstrap is not None:
            flags += ["--kafka-bootstrap", self.kafka_bootstrap]
        return flags


@dataclass(frozen=True, kw_only=True)
class Cache(Service):
    """`gati serve cache`: probe lookups, bundles from Redis."""

    kind: ClassVar[str] = "cache"
    health: ClassVar[str] = names.HEALTH_CACHE
    redis_url: str

    def flags(self) -> list[str]:
        return ["--redis-url", self.redis_url]


@dataclass(frozen=True, kw_only=True)
class Trainer(Service):
    """`gati serve trainer`: activation records from Kafka in, probe bundles to Redis out."""

    kind: ClassVar[str] = "trainer"
    health: ClassVar[str] = names.HEALTH_TRAINER
    model: Model
    kafka_bootstrap: str
    redis_url: str
    variants: str | None = None  # None: the trainer's default probe variants

    def flags(self) -> list[str]:
        variants = [] if self.variants is None else ["--variants", self.variants]
        wiring = ["--kafka-bootstrap", self.kafka_bootstrap, "--redis-url", self.redis_url]
        return [*wiring, *self.model.flags(), *variants]


def plain(port: int, model: Model, *, pin: bool = True, metrics_port: int = -1) -> Inference:
    """The baseline: a separate inference service with caches, records and the exact cache off,
    at its defaults (one torch thread); with `pin`, on the core a stack gives its model."""
    return Inference(
        name="plain",
        port=port,
        metrics_port=metrics_port,
        model=model,
        cpus=cores.one_machine_layout()[0] if pin else "",
        extra=("--exact-cache-entries", "0"),
    )


@dataclass(frozen=True)
class Topology:
    """Which services a stack runs and how they are wired: the one description `gati up`,
    the benchmarks' stacks and the tests share."""

    model: Model
    cache: bool = True
    trainer: bool = True
    records: bool = True  # the inference service sends activation records to Kafka
    host: str | None = None  # the services bind here (None: their default, all interfaces)
    pin: bool = True  # the model on a core of its own, the rest shared (services/common/cpus.py)
    http: bool = True  # the inference service's REST binding
    variants: str | None = None  # the trainer's probe variants (None: its default)
    inference_args: tuple[str, ...] = ()
    cache_args: tuple[str, ...] = ()
    trainer_args: tuple[str, ...] = ()
    tls: ClientTls | None = None  # every service serves TLS (mutual inside); None: plaintext

    @property
    def needs_redis(self) -> bool:
        return self.cache or self.trainer

    @property
    def needs_kafka(self) -> bool:
        return self.records or self.trainer

    def endpoints(self, private_redis: bool = True) -> list[str]:
        """Names (launch/ports.py) of every port the stack listens on."""
        wanted = ["inference", *(["inference_http"] if self.http else []), "inference_metrics"]
        if self.needs_kafka:
            wanted.append("kafka")
        if self.needs_redis and private_redis:
            wanted.append("redis")
        if self.cache:
            wanted += ["cache", "cache_metrics"]
        if self.trainer:
            wanted += ["trainer", "trainer_metrics"]
        return wanted

    def services(
        self, ports: Mapping[str, int], redis_url: str | None, kafka_bootstrap: str | None
    ) -> list[Service]:
        """Each service, in start order (cache, trainer, inference), on `ports`."""
        model_cpus, other_cpus = cores.one_machine_layout() if self.pin else ("", "")
        out: list[Service] = []
        cache = None
        if self.cache:
            assert redis_url is not None
            cache = Cache(
                port=ports["cache"], metrics_port=ports["cache_metrics"], redis_url=redis_url,
                cpus=other_cpus, extra=self.cache_args, host=self.host, tls=self.tls,
            )  # fmt: skip
            out.append(cache)
        if self.trainer:
            assert redis_url is not None and kafka_bootstrap is not None
            out.append(Trainer(
                port=ports["trainer"], metrics_port=ports["trainer_metrics"], model=self.model,
                kafka_bootstrap=kafka_bootstrap, redis_url=redis_url, variants=self.variants,
                cpus=other_cpus, extra=self.trainer_args, host=self.host, tls=self.tls,
            ))  # fmt: skip
        inference = Inference(
            port=ports["inference"], metrics_port=ports["inference_metrics"], model=self.model,
            http_port=ports["inference_http"] if self.http else -1,
            cache_address=None if cache is None else cache.address,
            kafka_bootstrap=kafka_bootstrap if self.records else None,
            cpus=model_cpus, extra=self.inference_args, host=self.host, tls=self.tls,
        )  # fmt: skip
        return [*out, inference]
