"""The options of `gati up`: its flags, checked, and the stack they describe.

Kept apart from the start sequence (cli/local/up.py) so that what a user can ask for reads in
one place; `UpOptions.topology` turns the answer into launch/topology.py's description.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from cli.local import state as st
from gati import names
from launch import ports as layout
from launch.ports import DEFAULT_PORT_BASE, LOCALHOST
from launch.topology import UP_VARIANTS, Model, Topology


class UsageError(ValueError):
    """A bad combination of options; the message says how to fix it."""


@dataclass(frozen=True)
class UpOptions:
    """What `gati up` was asked for, checked."""

    run_dir: Path
    weights: Path | None  # None only for a user factory (package.module:function)
    arch: str = "resnet56"
    model: str = "resnet56"  # the name clients put in ModelInferRequest.model_name
    redis_url: str | None = None  # None: start a private redis-server
    redis_password: str | None = None  # AUTH for an external Redis (private: generated)
    cache: bool = True
    trainer: bool = True
    records: bool = True  # the inference service sends activation records to Kafka
    port_base: int = DEFAULT_PORT_BASE  # 0: every port picked free by the OS
    host: str = LOCALHOST  # the services bind here; broker and private Redis stay on loopback
    pin: bool = True  # the model gets a core of its own, the other services share the rest
    tls: bool = False  # a generated CA: TLS on every service, mutual inside the stack
    timeout: float = 180.0  # for all services to be healthy (torch loads slowly on 2 busy cores)
    stop_timeout: float = 20.0  # SIGTERM to SIGKILL when cleaning up a failed start

    def topology(self) -> Topology:
        """The services these options ask for, wired as `gati up` wires them."""
        return Topology(
            Model(self.model, self.arch, self.weights),
            cache=self.cache,
            trainer=self.trainer,
            records=self.records,
            host=self.host,
            pin=self.pin,
            variants=UP_VARIANTS,
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--run-dir",
        default=st.DEFAULT_RUN_DIR,
        help="where state and logs go, relative to the current directory",
    )
    parser.add_argument("--arch", default="resnet56", help="resnet20/32/44/56 or pkg.mod:func")
    parser.add_argument("--model", default=None, help="served model name (default: the arch)")
    parser.add_argument("--weights", default=None, help="the model's weights file (required)")
    parser.add_argument(
        "--redis-url",
        default=None,
        help="use this Redis (already listening) instead of starting a private redis-server",
    )
    parser.add_argument(
        "--redis-password",
        default=os.environ.get(names.ENV_PREFIX + "REDIS_PASSWORD"),
        help="AUTH password of --redis-url (env GATI_REDIS_PASSWORD, or put it in the URL)",
    )
    parser.add_argument(
        "--cache",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="start the cache service (--no-cache: none)",
    )
    parser.add_argument(
        "--trainer",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="start the trainer service (--no-trainer: none)",
    )
    parser.add_argument(
        "--records",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the inference service sends activation records (--no-records with --no-trainer: "
        "no broker)",
    )
    parser.add_argument(
        "--ports",
        type=int,
        default=DEFAULT_PORT_BASE,
        metavar="BASE",
        help="port base: inference BASE+1 (REST +0, metrics +2), cache +11/+12, trainer +21/+22, "
        "Redis +79, Kafka +92; 0 picks free ports",
    )
    parser.add_argument("--host", default=LOCALHOST, help="address the services bind")
    parser.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the model on the first core, the other services on the rest (--no-pin: core "
        "placement left to the OS)",
    )
    parser.add_argument(
        "--tls",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="generate a local CA and certificates in RUN_DIR/tls: every service serves TLS, "
        "the cache and trainer refuse clients without a certificate (mutual TLS)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=180.0,
        help="seconds the services have to become healthy",
    )


def options_from_args(args: argparse.Namespace) -> UpOptions:
    weights = Path(args.weights).expanduser().resolve() if args.weights else None
    if weights is None and ":" not in args.arch:
        raise UsageError(
            f"--weights PATH is required for {args.arch} "
            "(e.g. --weights ASSETS/models/resnet56-4bfd9763.th; README: Data and weights)"
        )
    if weights is not None and not weights.is_file():
        raise UsageError(f"--weights {args.weights}: no such file")
    if not (args.ports == 0 or 1024 <= args.ports <= layout.MAX_BASE):
        raise UsageError(f"--ports {args.ports}: use 0 or a base within 1024..{layout.MAX_BASE}")
    if args.timeout <= 0:
        raise UsageError("--timeout must be positive")
    if args.redis_url and urlsplit(args.redis_url).scheme not in ("redis", "rediss"):
        raise UsageError(f"--redis-url {args.redis_url!r}: expected redis://host:port/db")
    return UpOptions(
        run_dir=st.resolve_run_dir(args.run_dir),
        weights=weights,
        arch=args.arch,
        model=args.model or args.arch.rpartition(":")[2],
        redis_url=args.redis_url,
        redis_password=args.redis_password or None,
        cache=args.cache,
        trainer=args.trainer,
        records=args.records,
        port_base=args.ports,
        host=args.host,
        pin=args.pin,
        tls=args.tls,
        timeout=args.timeout,
    )
