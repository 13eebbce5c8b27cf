"""What is served, recorded by the cache service, checked by `gati probes publish` (issue: no
silent misconfiguration): a bundle published under a name no inference service serves, or
fitted to other weights than the ones served under its name, is refused unless forced.

Real Redis and a real cache service (gRPC) throughout; the plan requests are the ones an
inference service sends (model name and weights fingerprint).
"""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest

from cli.main import main as gati_main
from gati import names
from gati.api import cache_pb2, cache_pb2_grpc
from gati.store import SERVED_KEY, BundleStore, served_mismatch
from services.cache.served import ServedModels
from tests.cache.helpers import FINGERPRINT, MODEL, make_bundle, wait_until

SERVED_FP = "a" * 32  # the weights the inference service of these tests serves


def ask_plan(stub, model: str, fingerprint: str = "") -> grpc.RpcError | cache_pb2.Plan:
    try:
        return stub.GetPlan(
            cache_pb2.PlanRequest(model=model, model_fingerprint=fingerprint), timeout=5
        )
    except grpc.RpcError as exc:
        return exc


def publish(bundle_dir: Path, redis_url: str, *flags: str) -> int:
    return gati_main(
        ["probes", "publish", "--bundle", str(bundle_dir), "--redis-url", redis_url, *flags]
    )


def test_not_found_names_the_models_held(store: BundleStore, start_cache) -> None:
    store.publish(make_bundle())
    store.publish(make_bundle(), model="other")
    server = start_cache()
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        err = ask_plan(cache_pb2_grpc.CacheServiceStub(channel), "cifar", SERVED_FP)
    assert isinstance(err, grpc.RpcError) and err.code() == grpc.StatusCode.NOT_FOUND
    trailer = dict(err.trailing_metadata())[names.PLAN_NOT_FOUND_KEY]
    assert list(cache_pb2.PlanNotFound.FromString(trailer).held_models) == ["other", MODEL]


def test_plan_requests_are_recorded_in_redis_as_served(store: BundleStore, start_cache) -> None:
    store.publish(make_bundle())
    server = start_cache(refresh_seconds=30)  # only the wake-up on a new pair can write it
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = cache_pb2_grpc.CacheServiceStub(channel)
        assert isinstance(ask_plan(stub, MODEL, FINGERPRINT), cache_pb2.Plan)
        assert isinstance(ask_plan(stub, "cifar", SERVED_FP), grpc.RpcError)  # missing: noted too
        ask_plan(stub, "nofp")  # an older inference service states no fingerprint: not noted
        ask_plan(stub, "bad:name", SERVED_FP)  # not a usable model name: not noted
        ask_plan(stub, "junk", "not hex!")
        wait_until(lambda: len(store.served()) == 2, timeout=20)
    assert store.served() == {"cifar": [SERVED_FP], MODEL: [FINGERPRINT]}
    assert 0 < store.client.ttl(SERVED_KEY) <= 300  # gone by itself when no one reports


def test_served_reports_expire(store: BundleStore) -> None:
    store.report_served([("old", SERVED_FP)], ttl_s=300)
    assert store.served(ttl_s=300) == {"old": [SERVED_FP]}
    now = store.client.time()[0]  # Redis's clock stamps reports, so age one on that clock
    store.client.zadd(SERVED_KEY, {f"old {SERVED_FP}": now - 400})
    assert store.served(ttl_s=300) == {}  # too old to count, though still in the key
    store.report_served([("new", SERVED_FP)], ttl_s=300)
    assert store.client.zrange(SERVED_KEY, 0, -1) == [f"new {SERVED_FP}".encode()]  # pruned


def test_a_pair_is_rewritten_only_while_it_is_asked_for() -> None:
    served = ServedModels(rewrite_s=0.2, forget_s=60)
    assert served.note("m", SERVED_FP) and not served.note("m", SERVED_FP)
    assert served.due() == [("m", SERVED_FP)]
    served.written(served.due())
    assert served.due() == []
    time.sleep(0.25)
    assert served.due() == []  # not asked since its write: left to expire in Redis
    served.note("m", SERVED_FP)
    assert served.due() == [("m", SERVED_FP)]


def test_publish_with_nothing_served_goes_ahead_with_a_note(
    redis_url: str, store: BundleStore, tmp_path: Path, capsys
) -> None:
    assert publish(make_bundle().save(tmp_path / "b"), redis_url) == 0
    out, err = capsys.readouterr()
    assert out.strip() == "1" and "could not be checked against a served model" in err


def test_publish_refuses_a_name_nobody_serves(
    redis_url: str, store: BundleStore, tmp_path: Path, capsys
) -> None:
    store.report_served([("cifar", SERVED_FP), ("resnet56", "b" * 32)])
    bundle_dir = make_bundle().save(tmp_path / "b")  # manifest: resnet20, weights FINGERPRINT
    assert publish(bundle_dir, redis_url) == 2
    err = capsys.readouterr().err
    assert "no inference service serves a model named 'resnet20'" in err
    assert f"served: cifar ({SERVED_FP[:12]}), resnet56 ({'b' * 12})" in err
    assert "--force publishes anyway" in err
    assert store.models() == []  # nothing written

    assert publish(bundle_dir, redis_url, "--force") == 0
    out, err = capsys.readouterr()
    assert out.strip() == "1" and "warning: no inference service serves" in err
    assert store.versions(MODEL) == [1]


def test_publish_refuses_a_bundle_fitted_to_other_weights(
    redis_url: str, store: BundleStore, tmp_path: Path, capsys
) -> None:
    store.report_served([(MODEL, SERVED_FP)])
    bundle_dir = make_bundle().save(tmp_path / "b")
    assert publish(bundle_dir, redis_url) == 2
    err = capsys.readouterr().err
    assert (
        f"fitted to model fingerprint {FINGERPRINT[:12]}, but 'resnet20' is served with "
        f"fingerprint {SERVED_FP[:12]}; refit the probes" in err
    )
    assert store.models() == []
    store.report_served([(MODEL, FINGERPRINT)])  # a second replica serves the bundle's weights
    assert publish(bundle_dir, redis_url) == 0
    assert "warning" not in capsys.readouterr().err


def test_publish_points_at_the_name_the_weights_are_served_under(
    redis_url: str, store: BundleStore, tmp_path: Path, capsys
) -> None:
    store.report_served([("cifar", FINGERPRINT)])
    bundle_dir = make_bundle().save(tmp_path / "b")
    assert publish(bundle_dir, redis_url) == 2
    err = capsys.readouterr().err
    assert "the model with those weights is served as 'cifar'" in err and "--model" in err
    assert publish(bundle_dir, redis_url, "--model", "cifar") == 0
    assert store.models() == ["cifar"]


def test_publish_checks_against_what_a_cache_service_recorded(
    redis_url: str, store: BundleStore, start_cache, tmp_path: Path, capsys
) -> None:
    """End to end: the registration is the cache service's, from an inference-style ask."""
    server = start_cache()
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        ask_plan(cache_pb2_grpc.CacheServiceStub(channel), "cifar", SERVED_FP)
    wait_until(lambda: store.served() != {}, timeout=20)
    assert publish(make_bundle().save(tmp_path / "b"), redis_url, "--model", "cifar") == 2
    assert "'cifar' is served with fingerprint" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("served", "model", "fingerprint", "says"),
    [
        ({}, "m", "x", None),
        ({"m": ["x", "y"]}, "m", "y", None),
        ({"m": ["x"]}, "m", "y", "'m' is served with fingerprint x"),
        ({"m": ["x"]}, "n", "z", "no inference service serves a model named 'n'"),
    ],
)
def test_served_mismatch(served, model: str, fingerprint: str, says: str | None) -> None:
    problem = served_mismatch(served, model, fingerprint)
    assert problem is None if says is None else says in (problem or "")
