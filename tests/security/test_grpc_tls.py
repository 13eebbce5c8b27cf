"""gRPC behind TLS, real handshakes: the inference endpoint serves TLS (the stock tritonclient
with ssl=True gets answers), the cache service demands client certificates (mutual TLS), the
inference service's lookups reach it over mutual TLS and serve hits, and a client without
the right certificate is refused with a clear status while the services stay healthy."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cli.main import main as gati
from gati import names
from gati.api import cache_pb2, cache_pb2_grpc
from gati.api import grpc_service_pb2_grpc as pb_grpc
from gati.data import load_npz
from gati.probes.fitting.synthetic import random_bundle
from gati.store import BundleStore
from launch.certificates import Certificates
from services.cache.config import CacheConfig
from services.cache.server import CacheServer
from services.cache.server import build as build_cache
from services.common.tls import ClientTls, channel
from services.inference.config import InferenceConfig
from services.inference.server import InferenceServer
from services.inference.server import build as build_inference
from tests.inference.helpers import infer_request, output

MODEL = "cifar"
TRITON_CHECK = Path(__file__).parents[1] / "inference" / "triton_client_check.py"


def server_tls(certs: Certificates, mutual: bool) -> dict[str, object]:
    pair = certs["server"]
    return {
        "tls_cert": str(pair.cert),
        "tls_key": str(pair.key),
        "tls_ca": str(certs.ca),
        "tls_client_auth": mutual,
    }


def client(certs: Certificates, with_cert: bool = True) -> ClientTls:
    return certs.client("client") if with_cert else ClientTls(str(certs.ca))


@pytest.fixture
def stack(
    redis_url: str, resnet20_weights: Path, certs: Certificates
) -> Iterator[tuple[CacheServer, InferenceServer]]:
    """A cache service under mutual TLS, and an inference service that serves TLS and calls
    the cache with its own certificate, both in this process over real gRPC."""
    cache = build_cache(
        CacheConfig(
            host="127.0.0.1",
            port=0,
            metrics_port=-1,
            redis_url=redis_url,
            refresh_seconds=0.2,
            **server_tls(certs, mutual=True),  # type: ignore[arg-type]
        )
    )
    try:
        inference = build_inference(
            InferenceConfig(
                host="127.0.0.1",
                port=0,
                metrics_port=-1,
                http_port=0,
                model=MODEL,
                arch="resnet20",
                weights=str(resnet20_weights),
                cache_address=f"localhost:{cache.port}",
                plan_refresh_seconds=0.2,
                shadow_fraction=0.0,
                exact_cache_entries=0,
                **server_tls(certs, mutual=False),  # type: ignore[arg-type]
            )
        )
    except BaseException:
        cache.stop()
        raise
    try:
        yield cache, inference
    finally:
        inference.stop()
        cache.stop()


def health(address: str, tls: ClientTls | None, service: str = "") -> str:
    """The health status name, or the gRPC status code's name when the call fails."""
    with channel(address, tls) as ch:
        try:
            reply = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=10
            )
        except grpc.RpcError as exc:
            return exc.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def test_inference_to_cache_over_mutual_tls_serves_hits(
    stack, certs: Certificates, redis_url: str, assets: Path
) -> None:
    cache, inference = stack
    fingerprint = inference.engine.models[MODEL].model.fingerprint()
    bundle = random_bundle(
        {"layer1.1": ("linear", 16)}, model_id=MODEL, fingerprint=fingerprint, threshold=0.0
    )
    store = BundleStore(redis_url)
    version = store.publish(bundle, model=MODEL)
    store.close()
    images = load_npz(assets / "cifar10" / "test.npz")[0][:8]
    rng = np.random.default_rng(0)
    with channel(f"localhost:{inference.port}", client(certs, with_cert=False)) as ch:
        stub = pb_grpc.GRPCInferenceServiceStub(ch)
        hits = 0
        for _ in range(600):  # the plan arrives within a refresh; generous under load
            fresh = rng.integers(0, 256, size=images.shape, dtype=np.uint8)
            reply = stub.ModelInfer(
                infer_request(MODEL, fresh, outputs=(names.OUTPUT_HIT,)), timeout=30
            )
            if reply.parameters[names.PARAM_BUNDLE_VERSION].int64_param == version:
                hits = int(output(reply, names.OUTPUT_HIT).sum())
                if hits:
                    break
    assert hits > 0, "no lookup over mutual TLS answered a hit"
    looked_up = cache.metrics.registry.get_sample_value(
        "gati_cache_lookups_total", {"model": MODEL, "layer": "layer1.1"}
    )
    assert looked_up and looked_up > 0


def test_cache_refuses_clients_without_the_right_certificate(
    stack, certs: Certificates, other_certs: Certificates
) -> None:
    cache, _ = stack
    address = f"localhost:{cache.port}"
    stranger = ClientTls(
        str(certs.ca), str(other_certs["client"].cert), str(other_certs["client"].key)
    )
    refused = {
        "plaintext": health(address, None),
        "no certificate": health(address, client(certs, with_cert=False)),
        "another CA's certificate": health(address, stranger),
        "server not trusted": health(address, client(other_certs)),
    }
    assert refused == dict.fromkeys(refused, "UNAVAILABLE")
    without = client(certs, with_cert=False)
    with channel(address, without) as ch, pytest.raises(grpc.RpcError) as info:
        cache_pb2_grpc.CacheServiceStub(ch).GetPlan(  # the API, not only health
            cache_pb2.PlanRequest(model=MODEL), timeout=10
        )
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    # refusing strangers costs the service nothing: a client with a certificate still gets in
    assert health(address, client(certs), names.HEALTH_CACHE) == "SERVING"


def test_tritonclient_over_tls_gets_answers(
    stack, certs: Certificates, tmp_path: Path, assets: Path
) -> None:
    _, inference = stack
    npz = tmp_path / "images.npz"
    np.savez(npz, x=load_npz(assets / "cifar10" / "test.npz")[0][:16])
    argv = [sys.executable, str(TRITON_CHECK), f"localhost:{inference.port}", MODEL, str(npz)]
    run = subprocess.run([*argv, str(certs.ca)], capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-2000:]
    got = json.loads(run.stdout)
    assert got["live"] and got["ready"] and got["model_ready"]
    assert len(got["labels_16"]) == 16
    # and a plaintext client gets nothing from the TLS endpoint
    plain = subprocess.run(argv, capture_output=True, text=True, timeout=180)
    assert plain.returncode != 0
    assert "UNAVAILABLE" in plain.stderr or "Socket closed" in plain.stderr


def test_rest_binding_serves_https_under_the_same_settings(stack, certs: Certificates) -> None:
    _, inference = stack
    url = f"https://localhost:{inference.http_port}/v2/health/ready"
    context = ssl.create_default_context(cafile=str(certs.ca))
    with urllib.request.urlopen(url, context=context, timeout=30) as reply:
        assert json.loads(reply.read()) == {"ready": True}
    with pytest.raises((urllib.error.URLError, ConnectionError)):  # no plain HTTP beside it
        urllib.request.urlopen(url.replace("https:", "http:"), timeout=30).read()


def test_gati_health_speaks_tls(stack, certs: Certificates, capsys) -> None:
    cache, inference = stack
    pair = certs["client"]
    with_cert = [
        "--tls-ca",
        str(certs.ca),
        "--tls-cert",
        str(pair.cert),
        "--tls-key",
        str(pair.key),
    ]
    cache_address = f"localhost:{cache.port}"
    assert gati(["health", cache_address, "--service", names.HEALTH_CACHE, *with_cert]) == 0
    assert "SERVING" in capsys.readouterr().out
    assert gati(["health", cache_address, "--tls-ca", str(certs.ca), "--timeout", "5"]) == 2
    assert "UNAVAILABLE" in capsys.readouterr().err
    inference_address = f"localhost:{inference.port}"
    assert gati(["health", inference_address, "--tls-ca", str(certs.ca)]) == 0
