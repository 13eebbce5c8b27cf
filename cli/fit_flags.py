"""Flags of `gati probes fit` and `eval` made from the fit's config classes (FitConfig, CostConfig).

Here and not beside the classes in gati.probes.fitting.fit_config: argparse belongs to the
command, the library only declares each setting (name, default, help, choices, check). Unlike
gati.config.add_arguments, which the services use, the flags carry their defaults (no
environment or file falls through under them) and a tuple is parsed from "a,b" at the flag.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Collection
from typing import Any, TypeVar

from gati.config import base_type, flag_name

C = TypeVar("C")


def _names(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


def add_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    *,
    skip: Collection[str] = (),
) -> None:
    """One `--field-name` per field of `cls` (but `skip`), with the field's help, choices and
    default; bools as `--x/--no-x`, tuples comma-separated. `skip`: fields the command sets
    itself, under a flag another group already defines."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        tp = base_type(hints[f.name])
        kw: dict[str, Any] = {"dest": f.name, "help": f.metadata["help"], "default": f.default}
        if tp is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif tp is tuple:
            # A string default goes through `type` too: help shows "a,b", the value is a tuple.
            kw["type"] = _names
            kw["default"] = None if f.default is None else ",".join(f.default)
            kw["metavar"] = f.name.upper()
        else:
            kw["type"] = tp
        if f.metadata.get("choices"):
            kw["choices"] = f.metadata["choices"]
        parser.add_argument(flag_name(f.name), **kw)


def from_flags(cls: type[C], args: argparse.Namespace, *, skip: Collection[str] = ()) -> C:
    """`cls` from the flags `add_flags` made (and any of the same name parsed otherwise)."""
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    return cls(**{n: getattr(args, n) for n in names if n not in skip and hasattr(args, n)})
