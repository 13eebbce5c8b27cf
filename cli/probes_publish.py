"""`gati probes publish --bundle DIR`: store a bundle in Redis as the model's next version.

Verifies the bundle first (a corrupt one never reaches Redis), assigns the next version,
points the model at it and announces it; the cache services follow within about a second.
With --signing-keys (env GATI_SIGNING_KEYS) the bundle is signed, as the trainer signs, so
cache services that check signatures take it; without, it is published unsigned.
Prints the new version number on stdout (and nothing else there, so scripts can read it).
"""

from __future__ import annotations

import argparse
import os
import sys

import redis

from cli.redis_options import add_redis_arguments, connect_options, resolve_redis
from gati import names
from gati.config import redacted
from gati.errors import GatiError
from gati.probes.serving.bundle import Bundle, BundleError
from gati.signing import SigningSettings
from gati.store import BundleStore, served_mismatch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bundle", required=True, help="bundle directory to publish (from gati probes fit)"
    )
    parser.add_argument(
        "--model",
        default=None,
        help="model name to publish under, as the inference service serves it "
        "(default: the model id in the bundle's manifest)",
    )
    parser.add_argument(
        "--force",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="publish even if no inference service serves this model name with the weights "
        "the bundle was fitted to (checked against what the cache services report in Redis)",
    )
    add_redis_arguments(parser)
    parser.add_argument(
        "--signing-keys",
        default=os.environ.get(names.ENV_PREFIX + "SIGNING_KEYS"),
        help="directory of HMAC keys, one file per key id, to sign the bundle with "
        "(env GATI_SIGNING_KEYS; default: with no --redis-url, the `gati up` stack's key, "
        "else unsigned, which cache services with keys refuse)",
    )
    parser.add_argument(
        "--signing-key-id",
        default=os.environ.get(names.ENV_PREFIX + "SIGNING_KEY_ID"),
        help="id of the key that signs (env GATI_SIGNING_KEY_ID; default: the only key there)",
    )


def run(args: argparse.Namespace) -> int:
    resolve_redis(args)
    keyring = SigningSettings(args.signing_keys, args.signing_key_id).keyring()  # ConfigError
    try:
        bundle = Bundle.load(args.bundle)
        store = BundleStore(args.redis_url, keyring=keyring, **connect_options(args))
        try:
            if not _check_served(store, bundle, args.model or bundle.model_id, args.force):
                return 2
            version = store.publish(bundle, args.model)
        finally:
            store.close()
    except (BundleError, GatiError) as exc:
        print(f"gati probes publish: {exc}", file=sys.stderr)
        return 2
    except redis.RedisError as exc:
        print(f"gati probes publish: redis at {redacted(args.redis_url)}: {exc}", file=sys.stderr)
        return 1
    model = args.model or bundle.model_id
    print(f"published {model} bundle v{version}", file=sys.stderr)
    print(version)
    return 0


def _check_served(store: BundleStore, bundle: Bundle, model: str, force: bool) -> bool:
    """False (refused, said on stderr) when the inference services the cache services report
    serve no model named `model` with the weights the bundle was fitted to: such a bundle
    would be loaded and never used, which nothing else would ever point out. With nothing
    reported at all (no stack ran yet) there is nothing to check: a note, and True."""
    served = store.served()
    if not served:
        print(
            "gati probes publish: note: no inference service has asked a cache service on "
            "this Redis for a plan lately, so the bundle could not be checked against a "
            "served model",
            file=sys.stderr,
        )
        return True
    problem = served_mismatch(served, model, bundle.model_fingerprint)
    if problem is None:
        return True
    if force:
        print(f"gati probes publish: warning: {problem}; publishing (--force)", file=sys.stderr)
        return True
    print(f"gati probes publish: {problem}; --force publishes anyway", file=sys.stderr)
    return False
