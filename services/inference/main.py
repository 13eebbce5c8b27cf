"""`gati serve inference`: serve models over the Open Inference Protocol v2 (gRPC, REST)."""

from __future__ import annotations

import argparse

from gati import config as cfg
from services.inference.config import InferenceConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    cfg.add_arguments(parser, InferenceConfig)


def run(args: argparse.Namespace) -> int:
    from services.common.shell import run_until_signal
    from services.inference.server import build

    config = cfg.load(InferenceConfig, args)
    server = build(config)
    rest = f", REST on port {server.http_port}" if server.http_port is not None else ""
    banner = f"gati inference service listening on {config.host}:{server.port}{rest}"
    return run_until_signal(server, banner, config.drain_seconds)
