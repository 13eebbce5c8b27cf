"""TLS, optionally mutual, for every gRPC server and channel gati opens.

One set of settings per process (`TlsSettings`, a config mixin): the certificate and key it
serves, which it also shows when it calls another service (inside the mesh each service is
both), and the CA that verifies its peers: the servers it calls, and, under
`tls_client_auth`, the clients that call it. Without a certificate a server listens in
plaintext and a client with no CA dials in plaintext: local development stays as it was.

The inference service's REST binding serves HTTPS with the same settings (`ssl_context`).
Health and reflection ride the same port, so they sit behind the same credentials: a
kubelet's gRPC probe cannot present a client certificate, which is why the manifests probe
with `grpc_health_probe`-style exec commands when mutual TLS is on (see deploy/k8s/README.md).
"""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from gati.config import ConfigError, require, setting

log = logging.getLogger(__name__)


def read_pem(path: str | None, field: str) -> bytes | None:
    """The file's bytes (None for no path); ConfigError naming `field` if unreadable."""
    if path is None:
        return None
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{field}: cannot read {path}: {exc.strerror or exc}") from None
    if b"-----BEGIN " not in data:
        raise ConfigError(f"{field}: {path} is not a PEM file")
    return data


@dataclass(frozen=True)
class ClientTls:
    """What a client needs to dial a TLS server, as file paths (so it can travel to a child
    process's command line without the key itself): the CA, and its own pair for mutual TLS."""

    ca: str
    cert: str | None = None
    key: str | None = None

    def __post_init__(self) -> None:
        require((self.cert is None) == (self.key is None), "tls_cert", "cert and key go together")

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            read_pem(self.ca, "tls_ca"),
            read_pem(self.key, "tls_key"),
            read_pem(self.cert, "tls_cert"),
        )


def channel(
    address: str, tls: ClientTls | None, options: Sequence[tuple[str, Any]] = ()
) -> grpc.Channel:
    """A blocking channel: TLS when `tls` is given, else plaintext."""
    if tls is None:
        return grpc.insecure_channel(address, options=list(options))
    return grpc.secure_channel(address, tls.credentials(), options=list(options))


def aio_channel(
    address: str, tls: ClientTls | None, options: Sequence[tuple[str, Any]] = ()
) -> grpc.aio.Channel:
    """As `channel`, for grpc.aio."""
    if tls is None:
        return grpc.aio.insecure_channel(address, options=list(options))
    return grpc.aio.secure_channel(address, tls.credentials(), options=list(options))


class CertificateReloader:
    """A server's certificate, key and client CA, read again when their files change.

    cert-manager renews a certificate in place (the Secret volume's files swap atomically), so
    a server that read its pair once would need a restart before the old one expires. gRPC
    asks this fetcher at each new handshake (three `stat` calls): connections already open
    keep their pair, new ones get the new one. A pair that does not load (a key that does not
    match its certificate, a file half-written) is not taken: the old pair stays, a warning
    says why, and the next handshake tries again."""

    def __init__(self, cert: str, key: str, ca: str | None) -> None:
        self.paths = (cert, key, *([ca] if ca else []))
        self.ca = ca
        self._seen = self._stamp()
        self._refused: tuple[tuple[int, int, int], ...] | None = None  # warned about once

    def _stamp(self) -> tuple[tuple[int, int, int], ...]:
        stats = (os.stat(p) for p in self.paths)  # follows a Secret volume's symlinks
        return tuple((s.st_mtime_ns, s.st_ino, s.st_size) for s in stats)

    def configuration(self) -> grpc.ServerCertificateConfiguration:
        cert, key = self.paths[:2]
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)  # a pair?
        pair = (read_pem(key, "tls_key"), read_pem(cert, "tls_cert"))
        roots = read_pem(self.ca, "tls_ca") if self.ca else None
        return grpc.ssl_server_certificate_configuration([pair], root_certificates=roots)

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        """The new configuration when a file changed and loads, else None (keep the old)."""
        try:
            stamp = self._stamp()
        except OSError:  # a file missing for a moment (a swap by hand): keep the old pair
            return None
        if stamp in (self._seen, self._refused):
            return None
        try:
            configuration = self.configuration()
        except (OSError, ConfigError) as exc:  # ssl.SSLError is an OSError
            log.warning("TLS files changed but do not load (%s); keeping the pair in use", exc)
            self._refused = stamp  # tried again once the files change again
            return None
        self._seen = stamp
        log.info("TLS certificate reloaded from %s", self.paths[0])
        return configuration


@dataclass(frozen=True)
class TlsSettings:
    """Config fields of a service's TLS (a mixin; call `check_tls` in `__post_init__`)."""

    tls_cert: str | None = setting(
        None,
        "PEM certificate (chain) this service serves and shows when it calls another; "
        "with tls_key: TLS on (unset: plaintext)",
    )
    tls_key: str | None = setting(None, "PEM private key of tls_cert")
    tls_ca: str | None = setting(
        None,
        "PEM CA bundle that verifies peers: the services this one calls (set: dial them "
        "with TLS) and, under tls_client_auth, its clients",
    )
    tls_client_auth: bool = setting(
        False, "mutual TLS: refuse clients without a certificate signed by tls_ca"
    )

    def check_tls(self) -> None:
        require((self.tls_cert is None) == (self.tls_key is None), "tls_cert", "set tls_key too")
        if self.tls_client_auth:
            require(self.tls_cert is not None, "tls_client_auth", "needs tls_cert and tls_key")
            require(self.tls_ca is not None, "tls_client_auth", "needs tls_ca (verifies clients)")
        read_pem(self.tls_cert, "tls_cert")
        read_pem(self.tls_key, "tls_key")
        read_pem(self.tls_ca, "tls_ca")

    def server_credentials(self) -> grpc.ServerCredentials | None:
        """Credentials for the listening port, re-read when the files change
        (`CertificateReloader`); None: plaintext."""
        if self.tls_cert is None or self.tls_key is None:
            return None
        ca = self.tls_ca if self.tls_client_auth else None
        reloader = CertificateReloader(self.tls_cert, self.tls_key, ca)
        return grpc.dynamic_ssl_server_credentials(
            reloader.configuration(), reloader, require_client_authentication=ca is not None
        )

    def ssl_context(self) -> ssl.SSLContext | None:
        """The same credentials for an HTTP server (the REST binding); None: plaintext."""
        if self.tls_cert is None or self.tls_key is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.tls_cert, self.tls_key)
        if self.tls_client_auth:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(self.tls_ca)
        return context

    def tls_summary(self) -> str:
        """For the start-up log line: how the port listens (never a secret)."""
        if self.tls_cert is None:
            return "gRPC plaintext"
        return "gRPC mutual TLS" if self.tls_client_auth else "gRPC TLS"

    def client_tls(self) -> ClientTls | None:
        """How this service dials the ones it calls; None (no tls_ca): plaintext."""
        if self.tls_ca is None:
            return None
        return ClientTls(self.tls_ca, self.tls_cert, self.tls_key)
