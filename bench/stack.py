"""A measured stack on one machine: private Redis, cache service, inference service.

Benchmarks start it in separate processes (real gRPC between processes), publish a bundle
through Redis the way operators do (`gati probes publish`), and tear everything down after.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from gati import names
from gati.api import grpc_service_pb2 as pb
from gati.api import grpc_service_pb2_grpc as pb_grpc
from gati.probes.serving.bundle import Bundle
from gati.store import BundleStore
from launch.ports import free_port, free_ports
from launch.processes import ManagedProcess, start_healthy, start_redis, start_tansu
from launch.topology import Model, Service, Topology, gati_argv, plain


@dataclass
class Stack:
    inference_port: int
    cache_port: int | None
    redis_url: str | None
    kafka_bootstrap: str | None
    processes: dict[str, ManagedProcess]
    log_dir: Path
    services: dict[str, Service]  # what each service was given: ports, health, flags

    def metric(self, service: str, name: str, **labels: str) -> float:
        """One sample from a service's Prometheus endpoint (0 when absent)."""
        return sum(
            value
            for sample_labels, value in self.samples(service, name)
            if all(sample_labels.get(k) == v for k, v in labels.items())
        )

    def samples(self, service: str, name: str) -> list[tuple[dict[str, str], float]]:
        """Every sample called `name` (labels, value), from one scrape."""
        url = f"http://127.0.0.1:{self.services[service].metrics_port}/metrics"
        text = urllib.request.urlopen(url, timeout=5).read().decode()
        return [
            (sample.labels, sample.value)
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name
        ]

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(
            f"127.0.0.1:{self.inference_port}",
            options=[
                ("grpc.max_send_message_length", 64 << 20),
                ("grpc.max_receive_message_length", 64 << 20),
            ],
        )


def publish(bundle_dir: Path, redis_url: str, model: str) -> int:
    """Publish a bundle directory for `model` through Redis; returns the new version."""
    store = BundleStore(redis_url)
    try:
        return store.publish(Bundle.load(bundle_dir), model=model)
    finally:
        store.close()


def fit_bundle_cli(
    arch: str, weights: str, data: str, start: int, stop: int, out: Path, *extra: str
) -> Path:
    """`gati probes fit` on images start..stop into `out` (progress shown on the terminal),
    costed for lookups on the cache service, which is where the benchmarks serve them."""
    argv = gati_argv(
        "probes",
        "fit",
        "--arch",
        arch,
        "--weights",
        weights,
        "--data",
        data,
        "--start",
        str(start),
        "--stop",
        str(stop),
        "--bundle",
        str(out),
        "--lookup-mode",
        "remote",
        *extra,
    )
    subprocess.run(argv, check=True, timeout=3600, stdout=sys.stderr)
    return out


def wait_for_bundle(
    stack: Stack, model: str, image: np.ndarray, version: int, timeout: float = 30.0
) -> float:
    """Send requests until answers carry bundle `version`; returns the seconds it took."""
    start = time.monotonic()
    with stack.channel() as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        while time.monotonic() - start < timeout:
            reply = stub.ModelInfer(request(model, image[None]))
            if reply.parameters[names.PARAM_BUNDLE_VERSION].int64_param == version:
                return time.monotonic() - start
            time.sleep(0.02)
    raise TimeoutError(f"bundle v{version} not in use after {timeout:.0f}s")


def request(
    model: str, batch: np.ndarray, caches: bool = True, outputs: tuple[str, ...] = ()
) -> pb.ModelInferRequest:
    r = pb.ModelInferRequest(model_name=model)
    r.inputs.add(name=names.INPUT_IMAGE, datatype="UINT8", shape=list(batch.shape))
    r.raw_input_contents.append(np.ascontiguousarray(batch).tobytes())
    r.parameters[names.PARAM_CACHES].bool_param = caches
    for name in outputs:
        r.outputs.add(name=name)
    return r


@contextmanager
def local_stack(
    log_dir: Path,
    model: str,
    arch: str,
    weights: str,
    *,
    cache: bool = True,
    kafka: bool = False,
    trainer: bool = False,
    inference_args: tuple[str, ...] = (),
    trainer_args: tuple[str, ...] = (),
    cache_args: tuple[str, ...] = (),
    pin: bool = True,
) -> Iterator[Stack]:
    """Start what is asked for, healthy, in separate processes; stop it all on exit.

    With `pin`, cores are placed as `gati up` places them (services/common/cpus.py)."""
    topology = Topology(
        Model(model, arch, weights),
        cache=cache,
        trainer=trainer,
        records=kafka or trainer,
        pin=pin,
        http=False,
        inference_args=inference_args,
        cache_args=cache_args,
        trainer_args=trainer_args,
    )
    ports = free_ports(topology.endpoints())
    log_dir.mkdir(parents=True, exist_ok=True)
    procs: dict[str, ManagedProcess] = {}
    with ExitStack() as stop:
        redis_url = bootstrap = None
        if topology.needs_redis:
            procs["redis"] = start_redis(ports["redis"], log_dir)
            stop.callback(procs["redis"].stop)
            redis_url = f"redis://127.0.0.1:{ports['redis']}/0"
        if topology.needs_kafka:
            procs["kafka"] = start_tansu(ports["kafka"], log_dir)
            stop.callback(procs["kafka"].stop)
            bootstrap = f"127.0.0.1:{ports['kafka']}"
        services = {s.name: s for s in topology.services(ports, redis_url, bootstrap)}
        for name, service in services.items():
            procs[name] = start_healthy(service, log_dir / f"{name}.log")
            stop.callback(procs[name].stop)
        yield Stack(
            ports["inference"], ports.get("cache"), redis_url, bootstrap, procs, log_dir, services
        )


@contextmanager
def plain_server(
    log_dir: Path, model: str, arch: str, weights: str, *, pin: bool = True
) -> Iterator[int]:
    """The baseline: a separate `gati serve inference` with caches, records and the exact
    cache off, at its best setting (its defaults: one torch thread, on the model's core as
    the stack's inference service is; `pin` False: wherever the OS puts it). Yields its gRPC
    port."""
    log_dir.mkdir(parents=True, exist_ok=True)
    service = plain(free_port(), Model(model, arch, weights), pin=pin, metrics_port=free_port())
    proc = start_healthy(service, log_dir / "plain.log")
    try:
        yield service.port
    finally:
        proc.stop()
