"""Every `gati` command resolves to a module with the leaf interface, and its --help works.

One CLI dialect: every option has help and shows its default, booleans are `--x/--no-x`
pairs, a concept has one flag name (and one default) across commands, `--log-level` goes
anywhere and `gati --version` prints the version.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import subprocess
import sys
from pathlib import Path

import pytest

import gati
from cli.main import COMMANDS, HelpFormatter, _build_parser, _chosen, main
from cli.main import leaf as leaf_module
from gati import config as cfg
from services.cache.config import CacheConfig
from services.inference.config import InferenceConfig
from services.trainer.config import TrainerConfig

Command = tuple[str | None, str]
SERVICE_CONFIGS = {
    ("serve", "inference"): InferenceConfig,
    ("serve", "cache"): CacheConfig,
    ("serve", "trainer"): TrainerConfig,
}
# one flag per concept: each spelling on the left is refused everywhere for the one on the right
FORBIDDEN = {
    "--model-id": "--model (the served model name)",
    "--model-name": "--model (the served model name)",
    "--target": "--agreement-target",
    "--lookup": "--lookup-mode",
    "--out": "--bundle (a bundle directory) or --report-dir (a report's)",
    "--bundle-dir": "--bundle",
    "--exact-entries": "--exact-cache-entries",
    "--torch-threads": "--threads",
    "--num-threads": "--threads",
    "--dataset": "--data",
    "--architecture": "--arch",
    "--weights-path": "--weights",
    "--checkpoint": "--weights",
    "--json-out": "--json",
    "--out-json": "--json",
    "--num-requests": "--requests",
    "--n-requests": "--requests",
    "--state-dir": "--run-dir",
    "--version": "--bundle-version (`--version` is gati's own, on `gati` alone)",
}
CANONICAL = (
    "--model",
    "--agreement-target",
    "--lookup-mode",
    "--bundle",
    "--bundle-version",
    "--exact-cache-entries",
    "--threads",
    "--data",
    "--arch",
    "--weights",
    "--json",
    "--run-dir",
    "--requests",
)
POSITIONAL_FORBIDDEN = {"bundle", "version", "bundle_version", "model"}  # options, never words
# simple settings whose default must agree wherever they appear (None: required / unset)
SAME_DEFAULT = (
    "--threads",
    "--agreement-target",
    "--lookup-mode",
    "--exact-cache-entries",
    "--seed",
    "--rtt-ms",
    "--send-ms",
    "--epochs",
    "--warm-epochs",
    "--max-probes",
    "--memory-size",
)


def _name(command: Command) -> str:
    return " ".join(filter(None, command))


@functools.cache
def leaf(command: Command) -> argparse.ArgumentParser:
    """The parser `gati` builds for `command`, with that module's real add_arguments."""
    parser = _build_parser(command)
    for word in filter(None, command):
        [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        parser = sub.choices[word]
    return parser


def options(command: Command) -> list[argparse.Action]:
    return [a for a in leaf(command)._actions if a.option_strings and a.dest != "help"]


def effective_default(command: Command, action: argparse.Action) -> object:
    """What the setting is when not given: a service flag falls through to its dataclass."""
    if command in SERVICE_CONFIGS and action.default is None:
        fields = {f.name: f for f in dataclasses.fields(SERVICE_CONFIGS[command])}
        if action.dest in fields:
            return cfg.field_default(fields[action.dest])
    return action.default


def rendered_help(command: Command, action: argparse.Action) -> str:
    formatter = leaf(command)._get_formatter()
    assert isinstance(formatter, HelpFormatter)
    return " ".join(formatter._expand_help(action).split())


ALL = sorted(COMMANDS, key=str)


@pytest.mark.parametrize("command", ALL, ids=_name)
def test_command_module_has_the_leaf_interface(command) -> None:
    module = leaf_module(command)
    assert callable(module.add_arguments) and callable(module.run)


def test_bench_rtt_help(capsys) -> None:
    with pytest.raises(SystemExit) as done:
        main(["bench", "rtt", "--help"])
    assert done.value.code == 0
    assert "--requests" in capsys.readouterr().out


@pytest.mark.parametrize("command", ALL, ids=_name)
def test_help_renders_every_option(command) -> None:
    text = leaf(command).format_help()
    assert text.startswith(f"usage: gati {_name(command)} ")
    assert [
        a.option_strings[-1] for a in options(command) if a.option_strings[-1] not in text
    ] == []


def test_every_option_has_help() -> None:
    missing = [
        f"gati {_name(c)} {a.option_strings[0]}"
        for c in ALL
        for a in options(c)
        if not (a.help or "").strip() or a.help == argparse.SUPPRESS
    ]
    assert not missing, "no help: " + ", ".join(missing)


def test_every_default_is_shown() -> None:
    hidden = []
    for c in ALL:
        for a in options(c):
            default = effective_default(c, a)
            if default in (None, argparse.SUPPRESS) or "password" in a.dest:
                continue
            text = rendered_help(c, a)
            shown = (f"default: {default}", f"default {default}", f"default: {default!r}",
                     f"default {default!r}")  # fmt: skip
            if not any(s in text for s in shown):
                hidden.append(f"gati {_name(c)} {a.option_strings[0]}={default!r}: {text}")
    assert not hidden, "default not shown:\n" + "\n".join(hidden)


def test_help_output_shows_defaults(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["status", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: .gati)" in out and "(default: 1.0)" in out and "(default: INFO)" in out
    with pytest.raises(SystemExit):
        main(["serve", "inference", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--caches, --no-caches" in out and "GATI_CACHES; default: True" in out


def test_no_password_default_is_shown(monkeypatch, capsys) -> None:
    monkeypatch.setenv("GATI_REDIS_PASSWORD", "sekrit-pw")
    monkeypatch.setenv("GATI_REDIS_URL", "redis://:sekrit-url@db:6379/0")
    for argv in (["up", "--help"], ["probes", "publish", "--help"]):
        with pytest.raises(SystemExit):
            main(argv)
        assert "sekrit" not in capsys.readouterr().out


def test_booleans_are_flag_pairs() -> None:
    """A yes/no setting is `--x` / `--no-x`, never `--x true` nor a lone store_true."""
    odd = [
        f"gati {_name(c)} {a.option_strings[0]} ({type(a).__name__})"
        for c in ALL
        for a in options(c)
        if a.nargs == 0
        and not isinstance(a, argparse.BooleanOptionalAction | argparse._VersionAction)
    ]
    assert not odd, "not --x/--no-x: " + ", ".join(odd)


def test_one_name_per_concept() -> None:
    used: dict[str, list[str]] = {}
    positional = []
    for c in ALL:
        for a in leaf(c)._actions:
            for flag in a.option_strings:
                used.setdefault(flag, []).append(_name(c))
            if not a.option_strings and a.dest in POSITIONAL_FORBIDDEN:
                positional.append(f"gati {_name(c)} {a.dest.upper()}")
    aliases = [
        f"{flag} in {used[flag]}: use {hint}" for flag, hint in FORBIDDEN.items() if flag in used
    ]
    assert not aliases, "\n".join(aliases)
    assert not positional, f"positional, should be options: {positional}"
    unused = [flag for flag in CANONICAL if flag not in used]
    assert not unused, f"canonical flags no command has: {unused}"


def test_a_flag_takes_a_value_everywhere_or_nowhere() -> None:
    """The same flag name in two commands is the same kind of thing (one concept per name)."""
    kinds: dict[str, dict[bool, list[str]]] = {}
    for c in ALL:
        for a in options(c):
            for flag in a.option_strings:
                kinds.setdefault(flag, {}).setdefault(a.nargs == 0, []).append(_name(c))
    mixed = {flag: k for flag, k in kinds.items() if len(k) > 1}
    assert not mixed, f"a plain flag (True) in some commands, a valued option in others: {mixed}"


def test_a_concept_has_one_default() -> None:
    defaults: dict[str, dict[str, list[str]]] = {}
    for c in ALL:
        for a in options(c):
            flag = a.option_strings[0]
            default = effective_default(c, a)
            if flag in SAME_DEFAULT and default is not None:
                defaults.setdefault(flag, {}).setdefault(repr(default), []).append(_name(c))
    differ = {flag: d for flag, d in defaults.items() if len(d) > 1}
    assert not differ, f"one setting, several defaults: {differ}"
    assert set(defaults["--threads"]) == {"1"}
    assert len(defaults["--threads"]["1"]) >= 5  # accuracy, report, fit, eval, the services


def test_version(capsys) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"gati {gati.__version__}\n"


@pytest.mark.parametrize(
    "argv",
    [
        ["--log-level", "debug", "status"],
        ["status", "--log-level", "DEBUG"],
        ["bench", "--log-level", "DEBUG", "rtt"],
        ["bench", "rtt", "--log-level=DEBUG", "--requests", "5"],
        ["--log-level", "DEBUG", "serve", "cache", "--port", "0"],
    ],
)
def test_log_level_anywhere(argv: list[str]) -> None:
    chosen = _chosen(argv)
    assert chosen is not None and chosen in COMMANDS
    assert _build_parser(chosen).parse_args(argv).log_level == "DEBUG"


def test_log_level_defaults_and_is_checked(capsys) -> None:
    assert _build_parser(("bench", "rtt")).parse_args(["bench", "rtt"]).log_level == "INFO"
    with pytest.raises(SystemExit):
        _build_parser(("bench", "rtt")).parse_args(["bench", "rtt", "--log-level", "LOUD"])
    assert "invalid choice: 'LOUD'" in capsys.readouterr().err


def test_log_level_after_the_command_end_to_end(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", "status", "--run-dir", "none", "--log-level", "DEBUG",
         "--json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 3, done.stderr  # nothing running, and the flags were accepted
    assert json.loads(done.stdout)["running"] is False
