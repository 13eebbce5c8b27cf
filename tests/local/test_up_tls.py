"""`gati up --tls`: a generated CA, TLS on every service, mutual TLS inside, signing on;
`gati status` and `gati health` see it healthy through those credentials, strangers are
refused, and `gati down` stops it."""

from __future__ import annotations

import stat
from pathlib import Path

import grpc
import numpy as np

from cli.local import state as st
from gati import names
from gati.api import grpc_service_pb2_grpc as pb_grpc
from gati.signing import Keyring
from services.common.tls import ClientTls, channel
from tests.inference.helpers import infer_request, output
from tests.local.test_local_stack import MODEL, gati, run_dir  # noqa: F401 (run_dir: fixture)


def test_up_tls_serves_tls_and_refuses_strangers(
    run_dir: Path,  # noqa: F811
    tmp_path: Path,
    resnet20_weights: Path,
) -> None:
    up = gati(
        "up", "--run-dir", str(run_dir), "--ports", "0", "--tls", "--no-trainer", "--no-records",
        "--model", MODEL, "--arch", "resnet20", "--weights", str(resnet20_weights),
        cwd=tmp_path,
    )  # fmt: skip
    assert up.returncode == 0, up.stdout + up.stderr
    state = st.load(run_dir)
    assert state is not None and state.complete and state.tls and state.signing_keys
    key = Path(state.tls["key"])
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert Keyring.load(state.signing_keys).signing_id  # one generated key signs
    cache, inference = state.get("cache"), state.get("inference")
    assert cache is not None and inference is not None

    status = gati("status", "--run-dir", str(run_dir), cwd=tmp_path, timeout=60)
    assert status.returncode == 0, status.stdout + status.stderr
    assert status.stdout.count("SERVING") >= 2

    ca = state.tls["ca"]
    # the inference endpoint: TLS, server-only (a client with just the CA is served)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(1, 32, 32, 3), dtype=np.uint8)
    with channel(inference.address, ClientTls(ca)) as ch:
        reply = pb_grpc.GRPCInferenceServiceStub(ch).ModelInfer(
            infer_request(MODEL, image, outputs=(names.OUTPUT_LABEL,)), timeout=60
        )
    assert output(reply, names.OUTPUT_LABEL).shape == (1,)
    with grpc.insecure_channel(inference.address) as ch:  # plaintext gets nothing
        try:
            pb_grpc.GRPCInferenceServiceStub(ch).ModelInfer(infer_request(MODEL, image), timeout=10)
            raise AssertionError("a plaintext client was served by a TLS endpoint")
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE

    # the cache service: mutual TLS; the stack's own pair gets in, a CA alone does not
    pair = ["--tls-cert", state.tls["cert"], "--tls-key", state.tls["key"]]
    health = ["health", cache.address, "--service", names.HEALTH_CACHE, "--tls-ca", ca]
    ok = gati(*health, *pair, cwd=tmp_path, timeout=60)
    assert ok.returncode == 0 and "SERVING" in ok.stdout, ok.stdout + ok.stderr
    refused = gati(*health, cwd=tmp_path, timeout=60)
    assert refused.returncode == 2 and "UNAVAILABLE" in refused.stderr

    down = gati("down", "--run-dir", str(run_dir), cwd=tmp_path, timeout=120)
    assert down.returncode == 0, down.stdout + down.stderr
    assert st.load(run_dir) is None
