"""The service images: no Docker engine here, so check what a build would depend on.

deploy/docker/Dockerfile must pin what requirements.txt and pyproject.toml pin, start each
target with a real `gati serve` subcommand, expose the ports of gati/names.py, run as the
user the manifests expect, and copy only what .dockerignore lets into the build context.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from cli.main import COMMANDS
from gati import names
from services.inference.config import InferenceConfig
from tests.deploy import k8s_checks as k8s
from tests.deploy import kustomize

REPO = k8s.REPO
DOCKERFILE = REPO / "deploy" / "docker" / "Dockerfile"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
# Packaging tools requirements.txt does not pin: the Dockerfile pins them itself, at a
# version pyproject's [build-system].requires accepts (and one version throughout).
BUILD_TOOLS = {"setuptools"}
PORTS = {
    "inference": {InferenceConfig.http_port, names.INFERENCE_PORT, names.INFERENCE_METRICS_PORT},
    "cache": {names.CACHE_PORT, names.CACHE_METRICS_PORT},
    "trainer": {names.TRAINER_PORT, names.TRAINER_METRICS_PORT},
}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", f"requirements.txt: {line} is not an exact pin"
            pins[_canonical(req.name)] = spec.version
    return pins


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines, current = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        if raw.lstrip().startswith("#") and not current:
            continue
        current += raw.rstrip("\\").strip() + " "
        if not raw.endswith("\\"):
            if current.strip():
                word, _, rest = current.strip().partition(" ")
                lines.append((word.upper(), rest.strip()))
            current = ""
    return lines


def stages() -> dict[str, list[tuple[str, str]]]:
    """Instructions of each named stage (FROM ... AS name)."""
    found: dict[str, list[tuple[str, str]]] = {}
    name = None
    for word, args in instructions():
        if word == "FROM":
            parts = args.split()
            name = parts[parts.index("AS") + 1] if "AS" in parts else parts[0]
            found[name] = [(word, args)]
        elif name is not None:
            found[name].append((word, args))
    return found


def targets() -> dict[str, list[tuple[str, str]]]:
    """Service targets: stages with an ENTRYPOINT."""
    return {n: s for n, s in stages().items() if any(w == "ENTRYPOINT" for w, _ in s)}


def test_one_target_per_serve_command() -> None:
    serve = {name for (group, name) in COMMANDS if group == "serve"}
    assert set(targets()) == serve == {"inference", "cache", "trainer"}


@pytest.mark.parametrize("target", ["inference", "cache", "trainer"])
def test_entrypoint_is_gati_serve(target: str) -> None:
    (entrypoint,) = [a for w, a in targets()[target] if w == "ENTRYPOINT"]
    argv = json.loads(entrypoint)  # exec form: the server is PID 1 and receives SIGTERM
    assert argv == ["gati", "serve", target]
    assert ("serve", argv[2]) in COMMANDS
    assert "gati" in PYPROJECT["project"]["scripts"]


@pytest.mark.parametrize("target", ["inference", "cache", "trainer"])
def test_exposed_ports_are_the_services(target: str) -> None:
    exposed = {int(p) for w, a in targets()[target] if w == "EXPOSE" for p in a.split()}
    assert exposed == PORTS[target]


def test_every_pin_matches_the_project() -> None:
    pins = requirements_pins()
    build_requires = [Requirement(r) for r in PYPROJECT["build-system"]["requires"]]
    seen = set()
    for word, args in instructions():
        if word != "RUN":
            continue
        for name, version in re.findall(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][^\s\"';&|]*)", args):
            key = _canonical(name)
            seen.add(key)
            if key in BUILD_TOOLS and key not in pins:
                (req,) = [r for r in build_requires if _canonical(r.name) == key]
                assert Version(version) in req.specifier, f"{name}=={version} vs {req}"
            else:
                assert pins.get(key) == version, (
                    f"Dockerfile {name}=={version}, pinned {pins.get(key)}"
                )
    assert "torch" in seen
    for tool in BUILD_TOOLS & seen:
        versions = set(re.findall(rf"{tool}==([0-9][^\s\"';&|]*)", DOCKERFILE.read_text()))
        assert len(versions) == 1, f"{tool} pinned at {versions}"


def test_torch_comes_from_the_cpu_index_alone() -> None:
    (run,) = [a for w, a in instructions() if w == "RUN" and "torch==" in a]
    argv = shlex.split(run)
    assert "--index-url" in argv and argv[argv.index("--index-url") + 1] == (
        "https://download.pytorch.org/whl/cpu"
    )
    assert "--no-deps" in argv  # torch's dependencies come pinned from PyPI
    assert [a for a in argv if "==" in a] == [f"torch=={requirements_pins()['torch']}"]


def test_runtime_dependencies_are_installed_at_the_exact_pins() -> None:
    """pyproject's dependencies, constrained by requirements.txt: each must have a pin there
    that its range allows, or the image would float."""
    runs = [a for w, a in instructions() if w == "RUN"]
    assert any("--constraint requirements.txt" in r and "dependencies" in r for r in runs)
    pins = requirements_pins()
    for dep in PYPROJECT["project"]["dependencies"]:
        req = Requirement(dep)
        pin = pins.get(_canonical(req.name))
        assert pin is not None, f"{req.name} has no pin in requirements.txt"
        assert Version(pin) in req.specifier, f"{req.name}=={pin} outside {req.specifier}"


def test_base_image_is_pinned_and_fits_the_project() -> None:
    (arg,) = [a for w, a in instructions() if w == "ARG" and a.startswith("PYTHON_IMAGE=")]
    image = arg.split("=", 1)[1]
    name, tag, digest = k8s.split_image(image)
    assert name == "python"
    version = re.match(r"(\d+\.\d+\.\d+)-slim", tag or "")
    assert version or digest, f"{image}: pin an exact Python version"
    assert Version(version.group(1)) in SpecifierSet(PYPROJECT["project"]["requires-python"])
    for word, args in instructions():
        if word == "FROM":
            assert args.split()[0] in ("${PYTHON_IMAGE}", *stages()), args


def test_runs_as_the_user_the_manifests_expect() -> None:
    (user,) = [a for w, a in stages()["runtime"] if w == "USER"]
    uid, _, gid = user.partition(":")
    assert int(uid) != 0 and int(gid) != 0
    for overlay in k8s.overlays():
        for w in k8s.workloads(kustomize.render(overlay)):
            spec = k8s.pod_template(w)["spec"]
            if any(
                k8s.split_image(c["image"])[0].endswith(
                    ("gati-inference", "gati-cache", "gati-trainer")
                )
                for c in k8s.containers(spec)
            ):
                assert spec["securityContext"]["runAsUser"] == int(uid)
                assert spec["securityContext"]["runAsGroup"] == int(gid)


def test_base_manifests_name_the_targets_images() -> None:
    version = PYPROJECT["project"]["version"]
    images = {
        c["image"]
        for w in k8s.workloads(kustomize.render(k8s.K8S / "base"))
        for c in k8s.containers(k8s.pod_template(w)["spec"])
        if c["image"].startswith("gati-")
    }
    assert images == {f"gati-{t}:{version}" for t in targets()}


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last matching pattern wins; `!` re-includes."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        p = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(x, p) or fnmatch.fnmatch(x, p.replace("**/", "")) for x in prefixes):
            ignored = not negate
    return ignored


def test_build_context_holds_what_the_build_copies_and_little_else() -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copied = []
    for word, args in instructions():
        if word == "COPY" and "--from" not in args:
            copied += args.split()[:-1]
    assert copied
    for source in copied:
        assert (REPO / source).exists(), source
        assert not _ignored(source, patterns), f"{source} is excluded by .dockerignore"
        assert not _ignored(f"{source}/x.py" if (REPO / source).is_dir() else source, patterns)
    for heavy in (".venv/bin/python", ".git/HEAD", "tests/conftest.py", "runs/x", "docs/x.md"):
        assert _ignored(heavy, patterns), heavy
    assert _ignored("gati/__pycache__/cli.cpython-311.pyc", patterns)
