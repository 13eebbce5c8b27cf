"""`gati serve cache` as a separate process against the test Redis: health, plan, metrics."""

from __future__ import annotations

import subprocess
import time
import urllib.request

import grpc

from gati.api import cache_pb2, cache_pb2_grpc
from gati.store import BundleStore
from launch.ports import LOCALHOST, free_port
from launch.processes import start_service, wait_serving
from launch.topology import Cache, gati_argv
from tests.cache.helpers import FINGERPRINT, MODEL, make_bundle, wait_until


def test_serve_cache_process(redis_url: str, store: BundleStore, tmp_path) -> None:
    store.publish(make_bundle())
    port, metrics_port = free_port(), free_port()
    service = Cache(port=port, metrics_port=metrics_port, redis_url=redis_url, host=LOCALHOST)
    proc = start_service(service, tmp_path / "cache.log")
    try:
        address = service.address
        wait_serving(service, proc, timeout=60)
        with grpc.insecure_channel(address) as channel:
            stub = cache_pb2_grpc.CacheServiceStub(channel)
            plan = stub.GetPlan(cache_pb2.PlanRequest(model=MODEL), timeout=5)
            assert (plan.bundle_version, plan.model_fingerprint) == (1, FINGERPRINT)

            bundle_dir = make_bundle(seed=2).save(tmp_path / "b2")
            start = time.perf_counter()
            out = subprocess.run(
                gati_argv(
                    "probes", "publish", "--bundle", str(bundle_dir), "--redis-url", redis_url
                ),
                capture_output=True,
                text=True,
                check=True,
                timeout=60,
            )
            assert out.stdout.strip() == "2"

            def on_v2() -> bool:
                return stub.GetPlan(cache_pb2.PlanRequest(model=MODEL)).bundle_version == 2

            wait_until(on_v2, timeout=10.0)
            print(
                f"\nCLI publish (a Python start-up included) -> plan v2: "
                f"{time.perf_counter() - start:.2f} s"
            )
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics").read().decode()
        assert f'gati_cache_bundle_version{{model="{MODEL}"}} 2.0' in text
    finally:
        proc.stop()
        print(proc.log_tail(5))
