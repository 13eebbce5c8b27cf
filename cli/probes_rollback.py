"""`gati probes rollback --bundle-version N --model NAME`: back to a published version.

The cache services follow the pointer, so a rollback takes effect exactly like a publish
(announced, and picked up by the periodic re-read if the announcement is lost).
"""

from __future__ import annotations

import argparse
import sys

import redis

from cli.redis_options import add_redis_arguments, connect_options, resolve_redis
from gati.config import redacted
from gati.errors import GatiError
from gati.store import BundleStore


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bundle-version",
        type=int,
        required=True,
        help="the published bundle version to point the model at",
    )
    parser.add_argument("--model", required=True, help="model name the bundle is published under")
    add_redis_arguments(parser)


def run(args: argparse.Namespace) -> int:
    resolve_redis(args)
    store = BundleStore(args.redis_url, **connect_options(args))  # ConfigError: exit 2
    try:
        store.rollback(args.model, args.bundle_version)
    except GatiError as exc:
        print(f"gati probes rollback: {exc}", file=sys.stderr)
        return 2
    except redis.RedisError as exc:
        print(f"gati probes rollback: redis at {redacted(args.redis_url)}: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    print(f"model {args.model} now uses bundle v{args.bundle_version}", file=sys.stderr)
    return 0
