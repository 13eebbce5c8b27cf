"""`gati serve cache`: answer probe lookups over the gati.v1 cache API, bundles from Redis."""

from __future__ import annotations

import argparse
import os

# One lookup is a few small matrix products: BLAS worker threads only add hand-off latency
# and fight the inference service for the cores. Must be set before numpy loads its BLAS.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

from gati import config as cfg  # noqa: E402 - after the thread settings above
from services.cache.config import CacheConfig  # noqa: E402


def add_arguments(parser: argparse.ArgumentParser) -> None:
    cfg.add_arguments(parser, CacheConfig)


def run(args: argparse.Namespace) -> int:
    from services.cache.server import build
    from services.common.shell import run_until_signal

    config = cfg.load(CacheConfig, args)
    server = build(config)
    banner = f"gati cache service listening on {config.host}:{server.port}"
    return run_until_signal(server, banner, config.drain_seconds)
