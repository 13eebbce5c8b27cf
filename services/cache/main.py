"""`gati serve cache`: answer probe lookups over the gati.v1 cache API, bundles from Redis."""

from __future__ import annotations

import argparse

from gati import config as cfg
from services.cache.config import CacheConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    cfg.add_arguments(parser, CacheConfig)


def run(args: argparse.Namespace) -> int:
    from services.cache.server import build

    config = cfg.load(CacheConfig, args)
    server = build(config)
    print(f"gati cache service listening on {config.host}:{server.port}", flush=True)
    server.handle.wait_for_signal(config.drain_seconds)
    server.close_clients()
    return 0
