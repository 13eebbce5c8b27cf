"""Typed service configuration, built once at start-up from flags, environment and a file.

A service declares a frozen dataclass; every field becomes a flag `--field-name` and an
environment variable `GATI_FIELD_NAME`, and may come from a YAML/JSON `--config` file.
Precedence: flag > environment > file > default. Invalid values fail at start with a message
naming the field (the dataclass's `__post_init__` checks ranges).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import yaml

from gati.names import ENV_PREFIX

C = TypeVar("C")


class ConfigError(ValueError):
    """A configuration value is missing or invalid; the message names the field."""


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def base_type(tp: Any) -> Any:
    """`int | None` -> int, `list[str]` -> list."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return base_type(args[0])
    return origin or tp


def _parse(field: dataclasses.Field, hint: Any, raw: Any) -> Any:
    tp = base_type(hint)
    if raw is None or (isinstance(raw, str) and raw == "" and tp is not str):
        return None
    try:
        if tp is bool:
            if isinstance(raw, bool):
                return raw
            value = str(raw).strip().lower()
            if value in ("1", "true", "yes", "on"):
                return True
            if value in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"expected true or false, got {raw!r}")
        if tp in (list, tuple):
            items = raw if isinstance(raw, list | tuple) else [s for s in str(raw).split(",") if s]
            return tuple(str(i).strip() for i in items)
        return tp(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{field.name}: {exc}") from None


def setting(
    default: Any, help_text: str, choices: Sequence[str] | None = None, secret: bool = False
) -> Any:
    """A config field with the help its flag shows, and the choices it takes if a fixed set:
    `check_choices` in the class's `__post_init__` refuses others, whether they came from a
    flag, the environment, a file or code, with one message naming the field.

    A `secret` (a password) has no flag: a command line is readable by every local user
    (`ps`), so it comes from the environment (a Secret's `secretKeyRef`) or the config file,
    and its value is never shown (`repr` of the config leaves it out)."""
    metadata = {"help": help_text, "choices": choices, "secret": secret}
    return dataclasses.field(default=default, metadata=metadata, repr=not secret)


def is_secret(f: dataclasses.Field) -> bool:
    return bool(f.metadata.get("secret"))


def check_choices(config: object) -> None:
    """Raise ConfigError naming the first field whose value is not among its choices (for
    `__post_init__`: argparse sees only flags, not environment, file or constructor values)."""
    for f in dataclasses.fields(config):  # type: ignore[arg-type]
        choices = f.metadata.get("choices")
        value = getattr(config, f.name)
        if choices and value not in choices:
            raise ConfigError(f"{f.name}: {value!r} invalid; valid: {', '.join(choices)}")


def field_default(f: dataclasses.Field) -> Any:
    """The value a field takes when neither flag, environment nor file sets it."""
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return f.default if f.default is not dataclasses.MISSING else None


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag per field (default None, so unset flags fall through to env and file).

    A bool field is a plain flag pair, `--name` / `--no-name` (its env and file values are
    still parsed as true/false). Choices are checked when the config is built
    (`check_choices`), so a bad value reads the same from any source."""
    parser.add_argument("--config", help="YAML or JSON file with settings (flags win over it)")
    secrets = _secret_settings(cls)
    if secrets:
        parser.epilog = f"{parser.epilog}\n{secrets}" if parser.epilog else secrets
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if is_secret(f):  # environment or config file only: see `setting`
            continue
        help_text = f"{f.metadata.get('help', '')} (env {env_name(f.name)}; "
        help_text += f"default: {field_default(f)!r})"
        is_bool = base_type(hints[f.name]) is bool
        kind: dict[str, Any] = (
            {"action": argparse.BooleanOptionalAction} if is_bool else {"metavar": f.name.upper()}
        )
        parser.add_argument(flag_name(f.name), dest=f.name, default=None, help=help_text, **kind)


def load(
    cls: type[C], args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None
) -> C:
    """Build `cls` from flags, environment and the `--config` file, in that precedence."""
    environ = os.environ if environ is None else environ
    file_values: dict[str, Any] = {}
    config_path = getattr(args, "config", None) if args is not None else None
    config_path = config_path or environ.get(env_name("config"))
    if config_path:
        text = Path(config_path).read_text()
        loaded = json.loads(text) if config_path.endswith(".json") else yaml.safe_load(text)
        if not isinstance(loaded, dict):
            raise ConfigError(f"{config_path}: expected a mapping of settings")
        file_values = {k.replace("-", "_"): v for k, v in loaded.items()}
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(file_values) - names
    if unknown:
        raise ConfigError(
            f"{config_path}: unknown settings {sorted(unknown)}; valid: {sorted(names)}"
        )
    values: dict[str, Any] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        raw = getattr(args, f.name, None) if args is not None else None
        if raw is None:
            raw = environ.get(env_name(f.name))
        if raw is None:
            raw = file_values.get(f.name)
        if raw is not None:
            values[f.name] = _parse(f, hints[f.name], raw)
    try:
        return cls(**values)
    except TypeError as exc:
        raise ConfigError(str(exc)) from None


def _secret_settings(cls: type) -> str:
    """One line for --help: the secrets `cls` reads from the environment or file, never flags."""
    secrets = [env_name(f.name) for f in dataclasses.fields(cls) if is_secret(f)]
    return f"secrets (environment or --config file only): {', '.join(secrets)}" if secrets else ""


def env_names(cls: type) -> set[str]:
    """Every environment variable a config class reads (manifests are checked against this)."""
    return {env_name(f.name) for f in dataclasses.fields(cls)} | {env_name("config")}


def redacted(value: object) -> str:
    """`value` as text, with the password of a URL (redis://:pw@host) shown as ***."""
    text = str(value)
    if isinstance(value, str) and "://" in value:
        password = urlsplit(value).password
        if password:
            return text.replace(f":{password}@", ":***@", 1)
    return text


def require(condition: bool, field: str, message: str) -> None:
    """Raise ConfigError naming `field` unless `condition` holds (for __post_init__ checks)."""
    if not condition:
        raise ConfigError(f"{field}: {message}")
