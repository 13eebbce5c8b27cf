"""`gati serve trainer`: learn probes from activation records on Kafka, publish to Redis."""

from __future__ import annotations

import argparse
import os

from gati import config as cfg
from services.common import cpus
from services.trainer.config import TrainerConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    cfg.add_arguments(parser, TrainerConfig)


def run(args: argparse.Namespace) -> int:
    from services.common.shell import run_until_signal
    from services.trainer.server import build

    config = cfg.load(TrainerConfig, args)
    if config.nice:
        os.nice(config.nice)  # fitting is background work: serving on shared cores goes first
    cpus.pin(config.cpus, "trainer")
    server = build(config)
    banner = f"gati trainer listening on {config.host}:{server.port} (health only)"
    return run_until_signal(server, banner, config.drain_seconds)
