"""`gati probes publish BUNDLE_DIR`: store a bundle in Redis as the model's next version.

Verifies the bundle first (a corrupt one never reaches Redis), assigns the next version,
points the model at it and announces it; the cache services follow within about a second.
Prints the new version number on stdout (and nothing else there, so scripts can read it).
"""

from __future__ import annotations

import argparse
import sys

import redis

from gati.commands.redis_options import add_redis_arguments
from gati.errors import GatiError
from gati.probes.bundle import Bundle, BundleError
from gati.store import BundleStore


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", metavar="BUNDLE_DIR", help="bundle directory (gati probes fit)")
    parser.add_argument(
        "--model",
        default=None,
        help="model name to publish under, as the inference service serves it "
        "(default: the model id in the bundle's manifest)",
    )
    add_redis_arguments(parser)


def run(args: argparse.Namespace) -> int:
    try:
        bundle = Bundle.load(args.bundle)
        store = BundleStore(args.redis_url, args.redis_password)
        try:
            version = store.publish(bundle, args.model)
        finally:
            store.close()
    except (BundleError, GatiError) as exc:
        print(f"gati probes publish: {exc}", file=sys.stderr)
        return 2
    except redis.RedisError as exc:
        print(f"gati probes publish: redis at {args.redis_url}: {exc}", file=sys.stderr)
        return 1
    model = args.model or bundle.model_id
    print(f"published {model} bundle v{version}", file=sys.stderr)
    print(version)
    return 0
