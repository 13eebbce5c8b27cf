"""Cache service + inference service in this process, over real gRPC and a real Redis.

For tests that read the services' own metrics registries; tests of separate processes use
`bench.stack.local_stack`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from gati.store import BundleStore
from services.cache.config import CacheConfig
from services.cache.server import CacheServer
from services.cache.server import build as build_cache
from services.inference.config import InferenceConfig
from services.inference.server import InferenceServer
from services.inference.server import build as build_inference

MODEL = "cifar"


@contextlib.contextmanager
def in_process_stack(
    redis_url: str, weights: Path, **inference: object
) -> Iterator[tuple[CacheServer, InferenceServer, BundleStore]]:
    """ResNet-20 served as MODEL, its cache service, and a store on the same Redis;
    `inference` overrides InferenceConfig fields."""
    cache = build_cache(
        CacheConfig(
            host="127.0.0.1", port=0, metrics_port=-1, redis_url=redis_url, refresh_seconds=0.2
        )
    )
    server = build_inference(
        InferenceConfig(
            **{
                "host": "127.0.0.1",
                "port": 0,
                "metrics_port": -1,
                "http_port": -1,
                "model": MODEL,
                "arch": "resnet20",
                "weights": str(weights),
                "cache_address": f"127.0.0.1:{cache.port}",
                "plan_refresh_seconds": 0.2,
                **inference,
            }
        )
    )
    store = BundleStore(redis_url)
    try:
        yield cache, server, store
    finally:
        server.stop()
        cache.stop()
        store.close()
