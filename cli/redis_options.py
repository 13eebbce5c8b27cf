"""The Redis flags shared by the `gati probes publish` and `gati probes rollback` commands.

With no --redis-url (nor GATI_REDIS_URL), the commands use the Redis of the `gati up` stack
recorded in --run-dir (default .gati), with its generated password: that Redis listens on a
port `gati up` picked, so the default URL would reach another Redis or none at all.
"""

from __future__ import annotations

import argparse
import os
import sys

from cli.local import state as st
from gati import names
from gati.config import ConfigError, redacted

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def add_redis_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--redis-url",
        default=os.environ.get(names.ENV_PREFIX + "REDIS_URL"),
        help="Redis holding the bundles (env GATI_REDIS_URL; default: the Redis of the "
        f"`gati up` stack in --run-dir, else {DEFAULT_REDIS_URL})",
    )
    parser.add_argument(
        "--redis-password",
        default=os.environ.get(names.ENV_PREFIX + "REDIS_PASSWORD"),
        help="Redis AUTH password (env GATI_REDIS_PASSWORD, or put it in the URL; default: "
        "none, or the `gati up` stack's)",
    )
    parser.add_argument(
        "--run-dir",
        default=None,
        help="with no --redis-url: use the Redis of the `gati up` stack in this run directory "
        f"(default {st.DEFAULT_RUN_DIR}, then {DEFAULT_REDIS_URL})",
    )


def resolve_redis(args: argparse.Namespace) -> None:
    """Fill in args.redis_url (and args.redis_password) when no URL was given: from the run
    directory's `gati up` state (said on stderr, so the Redis used is never a guess), else
    DEFAULT_REDIS_URL.
    A --run-dir that records no stack is a ConfigError (exit 2), not a silent default."""
    if args.redis_url:
        return
    run_dir = st.resolve_run_dir(args.run_dir)
    try:
        state = st.load(run_dir)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"run_dir: cannot read {st.state_path(run_dir)}: {exc}") from None
    if state is None or not state.redis_url:
        if args.run_dir is not None:
            raise ConfigError(
                f"run_dir: no `gati up` stack with a Redis is recorded in {run_dir}; "
                "start one or give --redis-url"
            )
        args.redis_url = DEFAULT_REDIS_URL
        return
    args.redis_url = state.redis_url
    if args.redis_password is None:  # the stack's own password, never sent to another Redis
        args.redis_password = state.redis_password
    print(
        f"using the Redis of the `gati up` stack in {run_dir}: {redacted(state.redis_url)}",
        file=sys.stderr,
    )
