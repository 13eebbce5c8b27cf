"""An inference service serving "cifar" against a cache service whose Redis holds a bundle only
under "resnet20" says so (issue: no silent misconfiguration): a warning naming the names held,
once per change, the gati_inference_bundle_missing gauge, and `gati status`.

Both services are real and built in this process (real Redis, real gRPC, the relay process),
so their metrics registries and log records can be read directly.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.local import state as st
from cli.local import status
from gati import names
from gati.probes.fitting.synthetic import random_bundle
from gati.store import BundleStore
from services.inference.server import InferenceServer
from tests.cache.helpers import make_bundle, wait_until
from tests.integration.inprocess import MODEL, in_process_stack

CLIENT_LOG = "services.inference.plan_feed"


def gauge(server: InferenceServer, name: str, **labels: str) -> float | None:
    return server.metrics.registry.get_sample_value(name, labels)


def warnings_for(caplog: pytest.LogCaptureFixture, model: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == CLIENT_LOG
        and r.levelno == logging.WARNING
        and r.getMessage().startswith(f"model {model}: the cache service")
    ]


@pytest.fixture
def stack(
    redis_url: str, resnet20_weights: Path, caplog
) -> Iterator[tuple[InferenceServer, BundleStore]]:
    caplog.set_level(logging.INFO, logger=CLIENT_LOG)
    publisher = BundleStore(redis_url)
    publisher.publish(make_bundle())  # a bundle under "resnet20" only
    publisher.close()
    with in_process_stack(redis_url, resnet20_weights, shadow_fraction=0.0, metrics_port=0) as (
        _,
        server,
        store,
    ):
        yield server, store


def test_a_model_without_a_bundle_is_warned_about_with_the_names_held(stack, caplog) -> None:
    server, store = stack
    assert server.cache is not None
    wait_until(lambda: warnings_for(caplog, MODEL), timeout=15)
    (warning,) = warnings_for(caplog, MODEL)
    assert "has no bundle for this name (it holds bundles for: resnet20)" in warning
    assert f"--model {MODEL}" in warning
    assert server.cache.plans.missing() == {MODEL: ("resnet20",)}
    assert gauge(server, "gati_inference_bundle_missing", model=MODEL) == 1
    assert gauge(server, "gati_inference_cache_holds", model=MODEL, held="resnet20") == 1

    time.sleep(1.0)  # asked again every 0.2 s: still one warning while nothing changes
    assert len(warnings_for(caplog, MODEL)) == 1

    # what is held changes: said again, with the new names
    store.publish(make_bundle(seed=1), model="resnet56")
    wait_until(lambda: len(warnings_for(caplog, MODEL)) == 2, timeout=10)
    assert "it holds bundles for: resnet20, resnet56" in warnings_for(caplog, MODEL)[1]
    assert gauge(server, "gati_inference_cache_holds", model=MODEL, held="resnet56") == 1

    # the inference service also registered what it serves, for `gati probes publish`
    fingerprint = server.engine.models[MODEL].model.fingerprint()
    wait_until(lambda: store.served().get(MODEL) == [fingerprint], timeout=5)

    # fixed: a bundle under the served name clears it all
    store.publish(
        random_bundle({"layer1.1": ("linear", 16)}, model_id=MODEL, fingerprint=fingerprint),
    )
    wait_until(lambda: gauge(server, "gati_inference_bundle_missing", model=MODEL) == 0, 10)
    assert server.cache.plans.missing() == {}
    assert gauge(server, "gati_inference_cache_holds", model=MODEL, held="resnet20") is None
    assert any("now has a bundle for this name" in r.getMessage() for r in caplog.records)
    assert len(warnings_for(caplog, MODEL)) == 2


def test_gati_status_shows_the_missing_bundle_and_the_names_held(stack, caplog) -> None:
    server, _ = stack
    assert server.metrics_port is not None
    wait_until(lambda: warnings_for(caplog, MODEL), timeout=15)
    record = st.ProcessRecord(
        name="inference",
        address=f"127.0.0.1:{server.port}",
        check=st.CHECK_GRPC,
        pid=os.getpid(),
        ports={"grpc": server.port, "metrics": server.metrics_port},
        health_service=names.HEALTH_INFERENCE,
    )
    state = st.StackState(run_dir="/nonexistent", complete=True, processes=[record])
    (row,) = status.collect(state)
    assert row.health == "SERVING" and row.ok
    assert row.freshness["missing"] == {MODEL: ["resnet20"]}
    assert row.freshness["plans"] == {MODEL: 0}
    assert "plans cifar v0; no bundle for cifar (cache holds: resnet20)" in status.render(
        state, [row]
    )
    assert status.as_json(state, [row])["processes"][0]["freshness"]["missing"] == {
        MODEL: ["resnet20"]
    }
