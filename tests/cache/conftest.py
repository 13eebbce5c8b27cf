"""Fixtures: a cache service built in-process on port 0 against the test's private Redis."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc
import pytest

from gati.api import cache_pb2_grpc
from gati.store import BundleStore
from services.cache.config import CacheConfig
from services.cache.server import CacheServer, build


@pytest.fixture
def store(redis_url: str) -> Iterator[BundleStore]:
    s = BundleStore(redis_url)
    yield s
    s.close()


@pytest.fixture
def start_cache(redis_url: str) -> Iterator[Callable[..., CacheServer]]:
    """Build cache services (port 0, no metrics port); every one is stopped at teardown."""
    servers: list[CacheServer] = []

    def start(**overrides) -> CacheServer:
        settings = {
            "host": "127.0.0.1",
            "port": 0,
            "metrics_port": -1,
            "redis_url": redis_url,
            "refresh_seconds": 0.5,
            **overrides,
        }
        server = build(CacheConfig(**settings))
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop(0)


@pytest.fixture
def cache(start_cache: Callable[..., CacheServer]) -> CacheServer:
    return start_cache()


@pytest.fixture
def channel(cache: CacheServer) -> Iterator[grpc.Channel]:
    ch = grpc.insecure_channel(f"127.0.0.1:{cache.port}")
    yield ch
    ch.close()


@pytest.fixture
def stub(channel: grpc.Channel) -> cache_pb2_grpc.CacheServiceStub:
    return cache_pb2_grpc.CacheServiceStub(channel)
