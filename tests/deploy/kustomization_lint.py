"""A structural lint of the kustomizations under a directory, which needs no kustomize.

It checks what a reader of the files can see, and nothing of what kustomize does with them:
- every file or directory a kustomization.yaml names under `resources`, `components` or a
  patch's `path` (the fields that name files in gati's kustomizations) exists; a named file
  parses as YAML, a named directory holds a kustomization.yaml;
- no YAML file beside a kustomization.yaml is left unnamed (a forgotten patch or resource).
  A file named only by some other field is reported here too, so the lint fails rather
  than overlooks it.
Whether the files make sense together (kinds, duplicates, what a patch matches) is for the
real kustomize to refuse (test_k8s_render.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

FILE_FIELDS = ("resources", "components", "patches")


def _refs(data: dict[str, Any], file: Path, found: list[str]) -> list[str]:
    refs = []
    for name in FILE_FIELDS:
        entries = data.get(name) or []
        if not isinstance(entries, list):
            found.append(f"{file}: {name} is not a list")
            continue
        for entry in entries:
            if name != "patches":
                refs.append(str(entry))
            elif isinstance(entry, dict) and "path" in entry:
                refs.append(str(entry["path"]))
    return refs


def problems(root: Path) -> list[str]:
    """One message per problem in the kustomizations under `root`; empty when none."""
    found: list[str] = []
    for file in sorted(Path(root).rglob("kustomization.yaml")):
        try:
            data = yaml.safe_load(file.read_text())
        except yaml.YAMLError as exc:
            found.append(f"{file}: not YAML ({exc})")
            continue
        if not isinstance(data, dict):
            found.append(f"{file}: not a mapping")
            continue
        named = set()
        for ref in _refs(data, file, found):
            path = (file.parent / ref).resolve()
            named.add(path)
            if path.is_dir():
                if not (path / "kustomization.yaml").is_file():
                    found.append(f"{file}: {ref} has no kustomization.yaml")
            elif not path.is_file():
                found.append(f"{file}: {ref} does not exist")
            else:
                try:
                    list(yaml.safe_load_all(path.read_text()))
                except yaml.YAMLError as exc:
                    found.append(f"{file}: {ref} is not YAML ({exc})")
        beside = [*file.parent.glob("*.yaml"), *file.parent.glob("*.yml")]
        for other in sorted(beside):
            if other != file and other.resolve() not in named:
                found.append(f"{file}: does not name {other.name}")
    return found
