"""Render a kustomization with the real kustomize: `kustomize build` where the standalone
tool is installed, else `kubectl kustomize`. Nothing here models what kustomize does.

Where neither is installed, `build` and `render` raise `NotFound`, and conftest.py turns that
into a skip naming the missing tool.
"""

from __future__ import annotations

import copy
import functools
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

Obj = dict[str, Any]

MISSING = (
    "neither `kustomize` nor `kubectl` is on PATH: rendering deploy/k8s needs one of them "
    "(the structural lint of the kustomizations still runs)"
)


class NotFound(FileNotFoundError):
    """Neither kustomize nor kubectl is installed: nothing here can render (tests skip)."""


class Error(RuntimeError):
    """kustomize exited non-zero for a kustomization (its stderr follows)."""


def command() -> list[str] | None:
    """`kustomize build` where the standalone tool is installed, else `kubectl kustomize`."""
    if exe := shutil.which("kustomize"):
        return [exe, "build"]
    if exe := shutil.which("kubectl"):
        return [exe, "kustomize"]
    return None


def build(path: Path) -> list[Obj]:
    """The objects kustomize renders for `path`, in its order (sorted by kind)."""
    argv = command()
    if argv is None:
        raise NotFound(MISSING)
    proc = subprocess.run([*argv, str(path)], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise Error(f"{' '.join(argv)} {path} exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def render(path: Path) -> list[Obj]:
    """`build`, remembered per path (kubectl takes a tenth of a second).

    Do not edit a tree after rendering it (use `build` for that). Each call returns a fresh
    copy, so callers may change what they get.
    """
    return copy.deepcopy(list(_render_once(str(Path(path).resolve()))))


@functools.cache
def _render_once(path: str) -> tuple[Obj, ...]:
    return tuple(build(Path(path)))
