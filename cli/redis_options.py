"""The Redis flags shared by the `gati probes publish` and `gati probes rollback` commands.

With no --redis-url (nor GATI_REDIS_URL), the commands use the Redis of the `gati up` stack
recorded in --run-dir (default .gati), with its generated password: that Redis listens on a
port `gati up` picked, so the default URL would reach another Redis or none at all.

A secured Redis is reached as the services reach it (`gati.store.RedisSettings`): TLS is the
URL's scheme (rediss://, verified against --redis-tls-ca or the system's CAs), an ACL user is
--redis-username, and the password is best given in GATI_REDIS_PASSWORD: a flag's value is
readable by every local user (`ps`). `connect_options` turns the flags into BundleStore's
keyword arguments.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from cli.local import state as st
from gati import names
from gati.config import ConfigError, redacted
from gati.store import RedisSettings

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
        help="Redis AUTH password; prefer env GATI_REDIS_PASSWORD, as a flag's value is "
        "visible to every local user in `ps` (or put it in the URL; default: none, or the "
        "`gati up` stack's)",
    )
    parser.add_argument(
        "--redis-username",
        default=os.environ.get(names.ENV_PREFIX + "REDIS_USERNAME"),
        help="Redis ACL user (env GATI_REDIS_USERNAME; default: the default user)",
    )
    parser.add_argument(
        "--redis-tls-ca",
        default=os.environ.get(names.ENV_PREFIX + "REDIS_TLS_CA"),
        help="PEM CA that verifies a rediss:// Redis (env GATI_REDIS_TLS_CA; default: the "
        "system's CAs)",
    )
    parser.add_argument(
        "--run-dir",
        default=None,
        help="with no --redis-url: use the Redis of the `gati up` stack in this run directory "
        f"(default {st.DEFAULT_RUN_DIR}, then {DEFAULT_REDIS_URL})",
    )


def resolve_redis(args: argparse.Namespace) -> None:
    """Fill in args.redis_url (and args.redis_password, and for a command that signs,
    args.signing_keys) when no URL was given: from the run directory's `gati up` state (said
    on stderr, so the Redis used is never a guess), else DEFAULT_REDIS_URL.
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
    if getattr(args, "signing_keys", False) is None:  # the stack's key: its cache checks it
        args.signing_keys = state.signing_keys
    print(
        f"using the Redis of the `gati up` stack in {run_dir}: {redacted(state.redis_url)}",
        file=sys.stderr,
    )


def connect_options(args: argparse.Namespace) -> dict[str, Any]:
    """BundleStore's keyword arguments beside the URL (password, ACL user, TLS CA), from the
    flags as `resolve_redis` left them; the same mapping as the services' `redis_options`.

    A CA with a redis:// URL is a ConfigError, not ignored: TLS is the URL's scheme, and a
    CA given for nothing means the connection would silently go unencrypted."""
    settings = RedisSettings(
        redis_url=args.redis_url,
        redis_username=args.redis_username or None,
        redis_password=args.redis_password,
        redis_tls_ca=args.redis_tls_ca or None,  # an empty environment variable is unset
    )
    settings.check_redis()  # the services' checks: ConfigError naming the field
    return settings.redis_options()
