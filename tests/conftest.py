"""Shared fixtures: real servers on free ports (never the machine's shared ones) and assets."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from launch.ports import free_port
from launch.processes import ManagedProcess, start_redis, start_tansu

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def assets() -> Path:
    """The shared CIFAR-10 data and ResNet weights (GATI_ASSETS, or ../shared/assets)."""
    path = Path(os.environ.get("GATI_ASSETS", REPO.parent / "shared" / "assets"))
    if not (path / "cifar10" / "test.npz").is_file():
        raise FileNotFoundError(f"assets not found at {path}: set GATI_ASSETS")
    return path


@pytest.fixture(scope="session")
def resnet20_weights(assets: Path) -> Path:
    return next((assets / "models").glob("resnet20-*.th"))


@pytest.fixture(scope="session")
def resnet56_weights(assets: Path) -> Path:
    return next((assets / "models").glob("resnet56-*.th"))


@pytest.fixture(scope="session")
def redis_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedProcess]:
    proc = start_redis(free_port(), tmp_path_factory.mktemp("redis"))
    yield proc
    proc.stop()


@pytest.fixture
def redis_url(redis_process: ManagedProcess) -> Iterator[str]:
    """A real Redis, emptied before each test."""
    port = int(redis_process.argv[redis_process.argv.index("--port") + 1])
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    client.flushall()
    client.close()
    yield url


@pytest.fixture(scope="session")
def kafka_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedProcess]:
    proc = start_tansu(free_port(), tmp_path_factory.mktemp("kafka"))
    yield proc
    proc.stop()


@pytest.fixture
def kafka_bootstrap(kafka_process: ManagedProcess) -> str:
    """A real Kafka-protocol broker (Tansu, in memory)."""
    url = kafka_process.argv[kafka_process.argv.index("--listener-url") + 1]
    return url.removeprefix("tcp://")
