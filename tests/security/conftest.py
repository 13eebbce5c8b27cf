"""Fixtures of the trust tests: a private CA with server and client certificates, and keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from launch.certificates import Certificates, generate, generate_signing_keys


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """ca.pem, and "server" and "client" pairs valid for localhost and 127.0.0.1."""
    return generate(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="session")
def other_certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """Another CA's certificates: what a stranger would present."""
    return generate(tmp_path_factory.mktemp("other-certs"))


@pytest.fixture
def signing_keys(tmp_path: Path) -> Path:
    """A key directory with one key, "k1" (the form a mounted Secret takes)."""
    return generate_signing_keys(tmp_path / "keys", "k1")


@pytest.fixture
def wrong_keys(tmp_path: Path) -> Path:
    """A directory with a different secret under the same key id: a forger's."""
    return generate_signing_keys(tmp_path / "wrong-keys", "k1")
