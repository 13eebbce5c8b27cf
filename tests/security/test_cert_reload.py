"""A renewed certificate is served without a restart: the files swap the way a Kubernetes
Secret volume swaps them (a `..data` symlink moved atomically), and the next handshake gets
the new pair and the new client CA; a pair that does not load is not taken."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from launch.certificates import Certificates
from services.common.grpc_server import AioGrpcServer, build_server
from services.common.tls import ClientTls, TlsSettings
from tests.cache.helpers import wait_until
from tests.security.test_grpc_tls import health


def write_version(volume: Path, name: str, certs: Certificates, key_of: Certificates) -> None:
    """A Secret volume's new version: files in `..NAME`, then `..data` moved onto it."""
    version = volume / f"..{name}"
    version.mkdir()
    shutil.copy(certs["server"].cert, version / "tls.crt")
    shutil.copy(key_of["server"].key, version / "tls.key")
    shutil.copy(certs.ca, version / "ca.crt")
    (volume / "..data_tmp").symlink_to(version.name)
    os.replace(volume / "..data_tmp", volume / "..data")
    for file in ("tls.crt", "tls.key", "ca.crt"):
        if not (volume / file).is_symlink():
            (volume / file).symlink_to(f"..data/{file}")


@pytest.fixture
def volume(tmp_path: Path, certs: Certificates) -> Path:
    path = tmp_path / "tls"
    path.mkdir()
    write_version(path, "v1", certs, certs)
    return path


def settings(volume: Path) -> TlsSettings:
    return TlsSettings(
        tls_cert=str(volume / "tls.crt"),
        tls_key=str(volume / "tls.key"),
        tls_ca=str(volume / "ca.crt"),
        tls_client_auth=True,
    )


@contextlib.contextmanager
def threaded(volume: Path) -> Iterator[int]:
    server, handle = build_server(
        "127.0.0.1", 0, 2, 1 << 20, ("x",), (), settings(volume).server_credentials()
    )
    server.start()
    handle.set_serving(True)
    try:
        yield handle.port
    finally:
        server.stop(0)


@contextlib.contextmanager
def aio(volume: Path) -> Iterator[int]:  # the cache service's kind of server
    handle = AioGrpcServer(
        "127.0.0.1", 0, 1 << 20, ("x",), (), lambda server: None,
        settings(volume).server_credentials(),
    )  # fmt: skip
    handle.set_serving(True)
    try:
        yield handle.port
    finally:
        handle.stop(0)


@pytest.mark.parametrize("serve", [threaded, aio], ids=["threaded", "aio"])
def test_a_renewed_pair_is_served_without_a_restart(
    serve: Callable[[Path], contextlib.AbstractContextManager[int]],
    volume: Path,
    certs: Certificates,
    other_certs: Certificates,
    caplog: pytest.LogCaptureFixture,
) -> None:
    old, new = certs.client("client"), other_certs.client("client")
    with serve(volume) as port:
        address = f"localhost:{port}"
        assert health(address, old, "x") == "SERVING"
        assert health(address, new, "x") == "UNAVAILABLE"  # the other CA: not yet

        write_version(volume, "v2", other_certs, other_certs)  # renewed, and a new CA
        wait_until(lambda: health(address, new, "x") == "SERVING", timeout=30)
        assert health(address, old, "x") == "UNAVAILABLE"  # old CA's clients: refused now

        with caplog.at_level(logging.WARNING, logger="services.common.tls"):
            write_version(volume, "v3", certs, other_certs)  # a key that is not the cert's
            assert health(address, new, "x") == "SERVING"  # the pair in use stays
            assert health(address, ClientTls(str(certs.ca)), "x") == "UNAVAILABLE"
        assert "do not load" in caplog.text
        assert caplog.text.count("do not load") == 1  # said once, not at every handshake
