"""A pure-Python `kustomize build` for the subset of kustomize that gati's manifests use.

CI renders the overlays with `kubectl kustomize` where kubectl is installed and with this
module where it is not; where both exist, a test checks that they agree object for object.
Anything outside the subset raises `KustomizeError` naming it, so the manifests cannot
drift into features that only one renderer knows.

The subset:
- kustomization fields `apiVersion`, `kind` (Kustomization or Component), `resources`
  (YAML files and directories), `components`, `patches`, `images`;
- patches are strategic merge patches, from `path` or inline `patch`, matched by the patch's
  own apiVersion/kind/name or by a `target` (group, version, kind, name as a regex);
- strategic merge: maps merge, a null value removes a key, `$patch: delete` removes an
  object or a list element, `$patch: replace` replaces a map; lists that Kubernetes merges by
  key (containers by name, env by name, volumeMounts by mountPath, ...) merge by that key,
  the patch's elements first and then the untouched ones, as kustomize orders them; every
  other list is replaced;
- images: `name` matched exactly, then `newName`, `newTag` or `digest`.

Order of work inside one kustomization, as kustomize does it: resources (each directory built
on its own), then components (their resources join, their patches and images apply to
everything gathered so far), then the kustomization's own patches, then its images.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

Obj = dict[str, Any]

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
FIELDS = {"apiVersion", "kind", "resources", "components", "patches", "images"}
PATCH_FIELDS = {"path", "patch", "target"}
TARGET_FIELDS = {"group", "version", "kind", "name"}
IMAGE_FIELDS = {"name", "newName", "newTag", "digest"}
CONTAINER_LISTS = ("containers", "initContainers", "ephemeralContainers")
# Lists Kubernetes merges by a key (patchMergeKey), by the name of the field holding them.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "imagePullSecrets": "name",
    "hostAliases": "ip",
    "topologySpreadConstraints": "topologyKey",
}
_DELETE = object()  # a strategic merge result meaning "remove this"


class KustomizeError(ValueError):
    """A kustomization is invalid or uses a feature outside the supported subset."""


def build(path: str | Path) -> list[Obj]:
    """The objects `kustomize build path` prints, in the order they were gathered."""
    return _build_dir(Path(path), expect="Kustomization")


def object_id(obj: Obj) -> tuple[str, str, str, str]:
    """(group, kind, namespace, name): what kustomize calls a resource id."""
    api = obj.get("apiVersion", "")
    group = api.split("/")[0] if "/" in api else ""
    meta = obj.get("metadata") or {}
    return (group, obj.get("kind", ""), meta.get("namespace", ""), meta.get("name", ""))


# --- kustomizations ------------------------------------------------------------------------
def _load_kustomization(directory: Path) -> Obj:
    for name in KUSTOMIZATION_FILES:
        file = directory / name
        if file.is_file():
            data = yaml.safe_load(file.read_text()) or {}
            unknown = set(data) - FIELDS
            if unknown:
                raise KustomizeError(
                    f"{file}: unsupported fields {sorted(unknown)}; supported: {sorted(FIELDS)}"
                )
            return data
    raise KustomizeError(f"{directory}: no kustomization.yaml")


def _build_dir(directory: Path, expect: str) -> list[Obj]:
    kustomization = _load_kustomization(directory)
    kind = kustomization.get("kind", "Kustomization")
    if kind != expect:
        raise KustomizeError(f"{directory}: kind {kind}, expected {expect}")
    objs: list[Obj] = []
    _accumulate(directory, kustomization, objs)
    return objs


def _accumulate(directory: Path, kustomization: Obj, objs: list[Obj]) -> None:
    for ref in kustomization.get("resources") or []:
        path = directory / ref
        if path.is_dir():
            _add(objs, _build_dir(path, expect="Kustomization"), path)
        elif path.is_file():
            _add(objs, _load_documents(path.read_text()), path)
        else:
            raise KustomizeError(f"{directory}: resource {ref!r} is neither a file nor a folder")
    for ref in kustomization.get("components") or []:
        path = directory / ref
        component = _load_kustomization(path)
        if component.get("kind") != "Component":
            raise KustomizeError(f"{path}: listed under components but kind is not Component")
        _accumulate(path, component, objs)
    for entry in kustomization.get("patches") or []:
        _apply_patch_entry(objs, entry, directory)
    for entry in kustomization.get("images") or []:
        _apply_image(objs, entry, directory)


def _load_documents(text: str) -> list[Obj]:
    docs = [d for d in yaml.safe_load_all(text) if d is not None]
    for doc in docs:
        if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
            raise KustomizeError(f"not a Kubernetes object: {str(doc)[:80]}")
    return docs


def _add(objs: list[Obj], new: list[Obj], source: Path) -> None:
    seen = {object_id(o) for o in objs}
    for obj in new:
        if object_id(obj) in seen:
            raise KustomizeError(f"{source}: {object_id(obj)} is defined twice")
        seen.add(object_id(obj))
        objs.append(obj)


# --- patches -------------------------------------------------------------------------------
def _apply_patch_entry(objs: list[Obj], entry: Obj, directory: Path) -> None:
    unknown = set(entry) - PATCH_FIELDS
    if unknown:
        raise KustomizeError(f"{directory}: unsupported patch fields {sorted(unknown)}")
    if ("path" in entry) == ("patch" in entry):
        raise KustomizeError(f"{directory}: a patch needs exactly one of path or patch")
    text = (directory / entry["path"]).read_text() if "path" in entry else entry["patch"]
    docs = [d for d in yaml.safe_load_all(text) if d is not None]
    for doc in docs:
        if not isinstance(doc, dict):
            raise KustomizeError(f"{directory}: only strategic merge patches are supported")
        targets = _select(objs, entry["target"]) if "target" in entry else _same_object(objs, doc)
        if not targets:
            raise KustomizeError(f"{directory}: patch {_describe(doc)} matches no object")
        for target in targets:
            index = next(i for i, o in enumerate(objs) if o is target)
            merged = strategic_merge(target, doc, kind=target.get("kind", ""))
            if merged is _DELETE:
                del objs[index]
            else:
                objs[index] = merged


def _describe(doc: Obj) -> str:
    return f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"


def _same_object(objs: list[Obj], patch: Obj) -> list[Obj]:
    name = (patch.get("metadata") or {}).get("name")
    return [
        o
        for o in objs
        if o.get("apiVersion") == patch.get("apiVersion")
        and o.get("kind") == patch.get("kind")
        and o["metadata"].get("name") == name
    ]


def _select(objs: list[Obj], target: Obj) -> list[Obj]:
    unknown = set(target) - TARGET_FIELDS
    if unknown:
        raise KustomizeError(f"unsupported patch target fields {sorted(unknown)}")
    found = []
    for obj in objs:
        api = obj.get("apiVersion", "")
        group, _, version = api.rpartition("/")
        if "group" in target and target["group"] != group:
            continue
        if "version" in target and target["version"] != version:
            continue
        if "kind" in target and target["kind"] != obj.get("kind"):
            continue
        if "name" in target and not re.fullmatch(target["name"], obj["metadata"]["name"]):
            continue
        found.append(obj)
    return found


def strategic_merge(original: Any, patch: Any, kind: str = "", path: tuple[str, ...] = ()) -> Any:
    """`patch` applied to `original` (neither is changed); `_DELETE` if it deletes it all."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    directive = patch.get("$patch")
    if directive == "delete":
        return _DELETE
    if directive == "replace":
        return _strip(patch)
    if directive is not None:
        raise KustomizeError(f"unsupported $patch: {directive}")
    if not isinstance(original, dict):
        return _strip(patch)
    result = copy.deepcopy(original)
    for key, value in patch.items():
        if key.startswith("$"):
            raise KustomizeError(f"unsupported patch directive {key}")
        if value is None:
            result.pop(key, None)
        elif key not in result:
            result[key] = _strip(value)
        elif isinstance(value, list):
            result[key] = _merge_list(result[key], value, kind, (*path, key))
        else:
            merged = strategic_merge(result[key], value, kind, (*path, key))
            if merged is _DELETE:
                del result[key]
            else:
                result[key] = merged
    return result


def _merge_key(kind: str, path: tuple[str, ...]) -> str | None:
    field = path[-1]
    if field == "ports":
        if len(path) >= 2 and path[-2] in CONTAINER_LISTS:
            return "containerPort"
        if kind == "Service" and path == ("spec", "ports"):
            return "port"
        return None
    return MERGE_KEYS.get(field)


def _merge_list(original: Any, patch: list, kind: str, path: tuple[str, ...]) -> list:
    key = _merge_key(kind, path)
    if key is None or not isinstance(original, list):
        return _strip(patch)
    by_key = {item.get(key): item for item in original if isinstance(item, dict)}
    touched = set()
    result = []
    for item in patch:
        if not isinstance(item, dict) or key not in item:
            raise KustomizeError(f"{'.'.join(path)}: every element needs its merge key {key}")
        touched.add(item[key])
        if item.get("$patch") == "delete":
            continue
        base = by_key.get(item[key])
        result.append(_strip(item) if base is None else strategic_merge(base, item, kind, path))
    result += [copy.deepcopy(o) for o in original if o.get(key) not in touched]
    return result


def _strip(value: Any) -> Any:
    """A copy of a patch value with directives checked and removed (a new element)."""
    if isinstance(value, dict):
        if any(k.startswith("$") and k != "$patch" for k in value):
            raise KustomizeError(f"unsupported patch directive in {value}")
        return {k: _strip(v) for k, v in value.items() if k != "$patch" and v is not None}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return copy.deepcopy(value)


# --- images --------------------------------------------------------------------------------
def split_image(image: str) -> tuple[str, str | None, str | None]:
    """`registry/name:tag@digest` -> (registry/name, tag, digest)."""
    rest, _, digest = image.partition("@")
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        return rest[:colon], rest[colon + 1 :], digest or None
    return rest, None, digest or None


def _apply_image(objs: list[Obj], entry: Obj, directory: Path) -> None:
    unknown = set(entry) - IMAGE_FIELDS
    if unknown or "name" not in entry:
        raise KustomizeError(f"{directory}: images entries take {sorted(IMAGE_FIELDS)}")
    for container in _containers_anywhere(objs):
        name, tag, digest = split_image(container.get("image", ""))
        if name != entry["name"]:
            continue
        name = entry.get("newName", name)
        if "digest" in entry:
            container["image"] = f"{name}@{entry['digest']}"
        elif "newTag" in entry:
            container["image"] = f"{name}:{entry['newTag']}"
        else:
            suffix = (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")
            container["image"] = name + suffix


def _containers_anywhere(value: Any) -> list[Obj]:
    found: list[Obj] = []
    if isinstance(value, dict):
        for key, sub in value.items():
            if key in CONTAINER_LISTS and isinstance(sub, list):
                found += [c for c in sub if isinstance(c, dict)]
            else:
                found += _containers_anywhere(sub)
    elif isinstance(value, list):
        for sub in value:
            found += _containers_anywhere(sub)
    return found


if __name__ == "__main__":  # python -m tests.deploy.kustomize_lite deploy/k8s/overlays/dev
    import sys

    print(yaml.safe_dump_all(build(sys.argv[1]), sort_keys=False), end="")
