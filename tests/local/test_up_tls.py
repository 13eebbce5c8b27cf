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

    status = gati("status", "--run-dir", str(run_dir), "--timeout", "10", cwd=tmp_path, timeout=90)
    assert status.returncode == 0, status.stdout + status.stderr
    rows: dict[str, str] = {}
    for words in (line.split() for line in status.stdout.splitlines()):
        if words[:1] in (["cache"], ["inference"]):
            rows.setdefault(words[0], words[3])  # NAME PID STATE HEALTH: the first table
    assert rows == {"cache": "SERVING", "inference": "SERVING"}, status.stdout  # through TLS
    assert f"clients verify it with {state.tls['ca']}" in status.stdout

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


def test_up_tls_certificate_names_the_host_the_services_bind(tmp_path: Path) -> None:
    """`gati up --tls --host ADDR` dials its services at ADDR: the certificate must name it,
    or every health check fails hostname verification. A real handshake at 127.0.0.2."""
    from cli.local.options import UpOptions
    from cli.local.up import _trusted
    from services.common.grpc_server import build_server
    from services.common.tls import TlsSettings
    from tests.security.test_grpc_tls import health

    run = tmp_path / "run"
    state = st.StackState(run_dir=str(run))
    opts = UpOptions(run_dir=run, weights=None, arch="pkg.mod:fn", host="127.0.0.2", tls=True)
    tls = _trusted(opts, state).tls
    assert tls is not None and state.tls == {"ca": tls.ca, "cert": tls.cert, "key": tls.key}
    settings = TlsSettings(tls_cert=tls.cert, tls_key=tls.key, tls_ca=tls.ca, tls_client_auth=True)
    server, handle = build_server(
        "127.0.0.2", 0, 2, 1 << 20, ("x",), (), settings.server_credentials()
    )
    server.start()
    handle.set_serving(True)
    try:
        assert health(f"127.0.0.2:{handle.port}", tls, "x") == "SERVING"
    finally:
        server.stop(0)
