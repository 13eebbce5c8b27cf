"""The layout keeps its promises: imports point one way, no cycles, no module past ~400 lines.

Layers, lowest first: `gati` (the library), `services`, `launch` (the topology on one
machine), `bench`, `cli` (the `gati` command). A module imports only its own layer or lower
ones, the library never names a higher layer even in a string (importlib, `python -m`),
probe serving never imports probe fitting, and no service imports another service. Every
import counts, also those inside functions and under TYPE_CHECKING: a lazy or type-only
import is still an arrow someone new has to follow.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAYERS = ("gati", "services", "launch", "bench", "cli")
GENERATED = "gati/api/"
MAX_LINES = 400
SERVICES = ("services.inference", "services.cache", "services.trainer")


def modules() -> dict[str, Path]:
    found = {}
    for top in LAYERS:
        for path in sorted((REPO / top).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            if rel.startswith(GENERATED):
                continue
            name = rel.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
            found[name] = path
    return found


MODULES = modules()


def imported(name: str, path: Path) -> Iterator[str]:
    """First-party modules `name` imports, anywhere in the file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            if target in MODULES:
                yield target


GRAPH = {name: sorted(set(imported(name, path))) for name, path in MODULES.items()}


def layer(name: str) -> int:
    return LAYERS.index(name.split(".")[0])


def test_the_layout_is_found() -> None:
    for must in ("gati.probes.serving.runtime", "services.common.shell", "launch.topology"):
        assert must in MODULES, must
    assert sum(len(targets) for targets in GRAPH.values()) > 300


def test_imports_point_down_the_layers() -> None:
    upward = [
        f"{name} -> {target}"
        for name, targets in GRAPH.items()
        for target in targets
        if layer(target) > layer(name)
    ]
    assert upward == []


def test_the_library_never_names_a_higher_layer_in_a_string() -> None:
    named = []
    for name, path in MODULES.items():
        if layer(name) != 0:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                word = node.value.split()[0] if node.value.split() else ""
                if word.split(".")[0] in LAYERS[1:] and "." in word:
                    named.append(f"{name}: {word!r}")
    assert named == []


def test_probe_serving_never_imports_probe_fitting() -> None:
    wrong = [
        f"{name} -> {target}"
        for name, targets in GRAPH.items()
        if name.startswith("gati.probes.serving")
        for target in targets
        if target.startswith("gati.probes.fitting")
    ]
    assert wrong == []


def test_no_service_imports_another() -> None:
    crossing = [
        f"{name} -> {target}"
        for name, targets in GRAPH.items()
        for target in targets
        for own in SERVICES
        if name.startswith(own)
        for other in SERVICES
        if other != own and target.startswith(other)
    ]
    assert crossing == []


def test_no_import_cycles() -> None:
    """Tarjan's strongly connected components; any with two or more modules is a cycle.
    A package importing its own submodule (re-export) is not an arrow back."""
    edges = {
        name: [t for t in targets if not t.startswith(name + ".")]
        for name, targets in GRAPH.items()
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for name in edges:
        if name not in index:
            visit(name)
    assert cycles == []


def test_every_module_is_small() -> None:
    sizes = {name: len(path.read_text().splitlines()) for name, path in MODULES.items()}
    assert max(sizes.values()) > 100  # the count reads real files
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}
