"""A private CA and certificates for a one-machine stack (`gati up --tls`, the tests).

A production cluster gets its certificates from its own CA (cert-manager, see
deploy/k8s/components/cert-manager); a laptop or a CI machine has none, so `gati up --tls`
makes one: an ECDSA P-256 CA that lives only in the run directory, and one certificate per
name it is asked for, valid for localhost and 127.0.0.1, usable both to serve and to call
(the services of one stack are each other's clients). Keys are written owner-only. Built with
`cryptography`, not hand-written ASN.1.

Also the signing keys of that stack: one random HMAC key in a directory, the form
`gati.signing.Keyring.load` reads.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from services.common.tls import ClientTls

VALID_DAYS = 30
HOSTS = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class Pair:
    """Paths of one certificate and its key."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class Certificates:
    """The CA every party trusts, and a pair per name (e.g. "server", "client")."""

    ca: Path
    pairs: dict[str, Pair]

    def __getitem__(self, name: str) -> Pair:
        return self.pairs[name]

    def client(self, name: str) -> ClientTls:
        """The CA and pair `name` as a client (or a stack's services) use them."""
        pair = self.pairs[name]
        return ClientTls(str(self.ca), str(pair.cert), str(pair.key))


def _write(path: Path, data: bytes, private: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "gati local stack"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _alt_names(hosts: tuple[str, ...]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def generate(
    directory: str | Path, names: tuple[str, ...] = ("server", "client"), hosts=HOSTS
) -> Certificates:
    """Write ca.pem and NAME.pem / NAME-key.pem for each name into `directory` (created)."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=VALID_DAYS)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("gati local CA")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path = out / "ca.pem"
    _write(ca_path, ca_cert.public_bytes(serialization.Encoding.PEM), private=False)
    pairs = {}
    for name in names:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(f"gati {name}"))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName(_alt_names(tuple(hosts))), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        pair = Pair(out / f"{name}.pem", out / f"{name}-key.pem")
        _write(pair.cert, cert.public_bytes(serialization.Encoding.PEM), private=False)
        _write(pair.key, _key_pem(key), private=True)
        pairs[name] = pair
    return Certificates(ca_path, pairs)


def generate_signing_keys(directory: str | Path, key_id: str = "local-1") -> Path:
    """A directory holding one random 32-byte HMAC key named `key_id` (owner-only)."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    os.chmod(out, 0o700)
    _write(out / key_id, secrets.token_hex(32).encode(), private=True)
    return out
