"""The Redis flags shared by the `gati probes publish` and `gati probes rollback` commands."""

from __future__ import annotations

import argparse
import os

from gati import names

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def add_redis_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--redis-url",
        default=os.environ.get(names.ENV_PREFIX + "REDIS_URL", DEFAULT_REDIS_URL),
        help=f"Redis holding the bundles (env GATI_REDIS_URL; default {DEFAULT_REDIS_URL})",
    )
    parser.add_argument(
        "--redis-password",
        default=os.environ.get(names.ENV_PREFIX + "REDIS_PASSWORD"),
        help="Redis AUTH password (env GATI_REDIS_PASSWORD, or put it in the URL)",
    )
