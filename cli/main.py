"""The `gati` command: one entry point, subcommands imported only when chosen.

Each leaf module exposes `add_arguments(parser)` and `run(args) -> int`; importing torch for
`gati --help` would cost seconds, so only the chosen leaf is imported (`leaf`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from types import ModuleType

from gati import __version__
from gati.config import ConfigError, redacted

# (group, command) -> one-line help. group None: a top-level command.
COMMANDS: dict[tuple[str | None, str], str] = {
    ("serve", "inference"): "serve models over the Open Inference Protocol",
    ("serve", "cache"): "serve probe lookups (gati.v1 cache API)",
    ("serve", "trainer"): "learn probes from Kafka, publish to Redis",
    ("probes", "fit"): "fit probes offline and write a bundle",
    ("probes", "eval"): "evaluate a bundle: per layer and cascade",
    ("probes", "publish"): "publish a bundle to Redis",
    ("probes", "rollback"): "point Redis at an earlier version",
    ("bench", "accuracy"): "top-1 through gRPC on a dataset",
    ("bench", "latency"): "gati vs a separate plain server, per workload",
    ("bench", "rtt"): "cache lookup round trip vs a bare gRPC ping-pong",
    ("bench", "report"): "the full comparison report with plots",
    (None, "up"): "start broker, Redis and the three services locally",
    (None, "down"): "stop everything `gati up` started",
    (None, "status"): "show what `gati up` runs and its health",
    (None, "health"): "ask one service's gRPC health (over TLS when set)",
    (None, "demo"): "the demo: a stream through the stack, live figures",
}


def leaf(command: tuple[str | None, str]) -> ModuleType:
    """The chosen command's module, imported only now, by a plain import statement so that
    every arrow from the command to what it runs is one tools can see."""
    match command:
        case ("serve", "inference"):
            from services.inference import main as module
        case ("serve", "cache"):
            from services.cache import main as module
        case ("serve", "trainer"):
            from services.trainer import main as module
        case ("probes", "fit"):
            from cli import probes_fit as module
        case ("probes", "eval"):
            from cli import probes_eval as module
        case ("probes", "publish"):
            from cli import probes_publish as module
        case ("probes", "rollback"):
            from cli import probes_rollback as module
        case ("bench", "accuracy"):
            from bench import accuracy as module
        case ("bench", "latency"):
            from bench import latency as module
        case ("bench", "rtt"):
            from bench import rtt as module
        case ("bench", "report"):
            from bench import report as module
        case (None, "up"):
            from cli.local import up as module
        case (None, "down"):
            from cli.local import down as module
        case (None, "status"):
            from cli.local import status as module
        case (None, "health"):
            from cli import health as module
        case (None, "demo"):
            from cli import demo as module
        case _:
            raise KeyError(f"no command {command}")
    return module


GROUP_HELP = {
    "serve": "run a service",
    "probes": "fit, evaluate and publish learned caches",
    "bench": "benchmarks that print a table and write JSON",
}


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_STATES_DEFAULT = ("%(default)", "default:", "(default ", "; default ")  # help that says it


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps descriptions' newlines and shows every option's default.

    `(default: X)` is appended unless the help already states the default, or there is none
    to show (None: the help says what unset means). Defaults read from the environment can
    be secrets: a password's is never shown, nor the password inside a URL."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if any(s in text for s in _STATES_DEFAULT) or "password" in action.dest:
            return text
        if action.default in (None, argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: {redacted(action.default).replace('%', '%%')})"


def _common_options(top: bool) -> argparse.ArgumentParser:
    """Options accepted before or after any (sub)command; below the top, a flag not given
    is left out of the namespace (SUPPRESS) so it never overwrites the top-level value."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--log-level",
        type=str.upper,
        choices=LOG_LEVELS,
        metavar="LEVEL",
        default="INFO" if top else argparse.SUPPRESS,
        help=f"logging level: {', '.join(LOG_LEVELS)}; before or after any command (default: INFO)",
    )
    return common


def _build_parser(chosen: tuple[str | None, str] | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gati",
        description=__doc__.splitlines()[0],
        formatter_class=HelpFormatter,
        parents=[_common_options(top=True)],
    )
    parser.add_argument("--version", action="version", version=f"gati {__version__}")
    top = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    below = {"formatter_class": HelpFormatter, "parents": [_common_options(top=False)]}
    groups: dict[str, argparse._SubParsersAction] = {}
    for (group, name), help_text in COMMANDS.items():
        if group is None:
            sub = top.add_parser(name, help=help_text, description=help_text, **below)
        else:
            if group not in groups:
                gp = top.add_parser(
                    group, help=GROUP_HELP[group], description=GROUP_HELP[group], **below
                )
                groups[group] = gp.add_subparsers(
                    dest="subcommand", metavar="SUBCOMMAND", required=True
                )
            sub = groups[group].add_parser(name, help=help_text, description=help_text, **below)
        if (group, name) == chosen:
            mod = leaf(chosen)
            mod.add_arguments(sub)
            sub.set_defaults(_run=mod.run)
    return parser


def _chosen(argv: list[str]) -> tuple[str | None, str] | None:
    words = []
    skip = False
    for a in argv:
        if skip:
            skip = False
        elif a == "--log-level":
            skip = True  # its value is not a command word (`--log-level=X` is one word)
        elif not a.startswith("-"):
            words.append(a)
    if words and (None, words[0]) in COMMANDS:
        return (None, words[0])
    if len(words) >= 2 and (words[0], words[1]) in COMMANDS:
        return (words[0], words[1])
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _build_parser(_chosen(argv)).parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args._run(args) or 0)
    except ConfigError as exc:
        print(f"gati: invalid configuration: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
