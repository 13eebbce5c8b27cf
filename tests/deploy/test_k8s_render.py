"""Every overlay renders with the real kustomize, as its kustomization declares.

Rendering is `kustomize build` or `kubectl kustomize` (k8s_checks.kustomize_build); where
neither is installed the tests that render skip, naming the missing tool, and the structural
checks of every kustomization (k8s_checks.kustomization_problems) still run.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from tests.deploy import k8s_checks as k8s

OVERLAYS = k8s.overlays()


def test_the_three_overlays_exist() -> None:
    assert [p.name for p in OVERLAYS] == ["dev", "prod", "sidecar"]


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_every_overlay_renders(overlay: Path) -> None:
    objs = k8s.render(overlay)
    kinds = {o["kind"] for o in objs}
    assert {"Deployment", "StatefulSet", "Service", "ConfigMap", "NetworkPolicy"} <= kinds


def _by_id(objs: list[dict]) -> dict:
    """Objects by resource id: kustomize sorts its output by kind, the order means nothing."""
    return {k8s.object_id(o): o for o in objs}


@pytest.mark.parametrize("path", [*OVERLAYS, k8s.K8S / "base"], ids=lambda p: p.name)
def test_render_has_the_declared_objects(path: Path) -> None:
    """The resources and components the kustomizations name, less the `$patch: delete`s:
    no more, no fewer, none twice."""
    declared = sorted(k8s.object_id(o) for o in k8s.declared_objects(path))
    assert len(set(declared)) == len(declared)
    assert sorted(k8s.object_id(o) for o in k8s.render(path)) == declared


def test_every_kustomization_is_sound_without_rendering() -> None:
    """Runs with no kustomize installed: every file named exists and parses, kinds and
    apiVersions are right, nothing is declared twice, no YAML file is left unnamed."""
    assert k8s.kustomization_problems() == []


def test_every_kustomization_stays_within_the_checked_fields() -> None:
    """Components included: a field the structural check does not know could name files
    that nothing checks where kustomize is not installed."""
    for file in k8s.K8S.rglob("kustomization.yaml"):
        data = yaml.safe_load(file.read_text())
        assert set(data) <= k8s.KUSTOMIZATION_FIELDS, (
            f"{file}: {set(data) - k8s.KUSTOMIZATION_FIELDS}"
        )


def test_unsupported_field_is_refused(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("namePrefix: x-\nresources: []\n")
    problems = k8s.kustomization_problems(tmp_path)
    assert any("namePrefix" in p and "not checked" in p for p in problems), problems


# "structure": k8s_checks.kustomization_problems, which runs everywhere; "kustomize": the tool.
CHECKS = ["structure", "kustomize"]


@pytest.mark.parametrize("check", CHECKS)
def test_duplicate_objects_are_refused(tmp_path: Path, check: str) -> None:
    cm = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n"
    (tmp_path / "a.yaml").write_text(cm)
    (tmp_path / "b.yaml").write_text(cm)
    (tmp_path / "kustomization.yaml").write_text("resources: [a.yaml, b.yaml]\n")
    if check == "structure":
        assert any("defined twice" in p for p in k8s.kustomization_problems(tmp_path))
    else:
        with pytest.raises(k8s.KustomizeError, match="already registered id"):
            k8s.kustomize_build(tmp_path)


@pytest.mark.parametrize("check", CHECKS)
def test_missing_and_unnamed_files_are_refused(tmp_path: Path, check: str) -> None:
    (tmp_path / "a.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n")
    (tmp_path / "kustomization.yaml").write_text("resources: [b.yaml]\n")
    if check == "structure":
        problems = k8s.kustomization_problems(tmp_path)
        assert any("resource b.yaml does not exist" in p for p in problems), problems
        assert any("does not name a.yaml" in p for p in problems), problems
    else:
        with pytest.raises(k8s.KustomizeError, match=r"b\.yaml: no such file"):
            k8s.kustomize_build(tmp_path)


def test_patch_matching_nothing_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n")
    (tmp_path / "p.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: b}\n")
    (tmp_path / "kustomization.yaml").write_text("resources: [a.yaml]\npatches: [{path: p.yaml}]\n")
    with pytest.raises(k8s.KustomizeError, match="no resource matches"):
        k8s.kustomize_build(tmp_path)


DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: x, labels: {keep: "1", drop: "1"}}
spec:
  template:
    spec:
      containers:
        - name: a
          image: reg/a:1
          env: [{name: A, value: "1"}, {name: B, value: "2"}, {name: C, value: "3"}]
          ports: [{containerPort: 1, name: p1}, {containerPort: 2, name: p2}]
          args: [x, y]
        - name: b
          image: b@sha256:0000
"""
PATCH = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: x, labels: {drop: null}}
spec:
  template:
    spec:
      containers:
        - name: b
          env: [{name: Z, value: "9"}]
        - name: c
          image: k
        - name: a
          env: [{name: C, value: "33"}, {name: D, value: "4"}, {name: B, $patch: delete}]
          ports: [{containerPort: 2, name: p2x}]
          args: [z]
"""
SERVICE = """
apiVersion: v1
kind: Service
metadata: {name: s}
spec:
  ports: [{name: a, port: 1}, {name: b, port: 2}]
"""
SERVICE_PATCH = """
apiVersion: v1
kind: Service
metadata: {name: s}
spec:
  ports: [{name: bb, port: 2}]
"""


def _write_case(tmp_path: Path) -> Path:
    (tmp_path / "d.yaml").write_text(DEPLOYMENT)
    (tmp_path / "s.yaml").write_text(SERVICE)
    (tmp_path / "p.yaml").write_text(PATCH)
    (tmp_path / "sp.yaml").write_text(SERVICE_PATCH)
    (tmp_path / "kustomization.yaml").write_text(
        "resources: [d.yaml, s.yaml]\n"
        "patches: [{path: p.yaml}, {path: sp.yaml}]\n"
        "images:\n"
        "  - {name: reg/a, newName: other/a, newTag: '2'}\n"
        "  - {name: b, newName: reg/b}\n"
        "  - {name: k, digest: 'sha256:1111'}\n"
    )
    return tmp_path


def test_strategic_merge_and_images(tmp_path: Path) -> None:
    """Exact result: merge keys, element order, deletion, nulls, list replacement, images."""
    objs = k8s.kustomize_build(_write_case(tmp_path))
    (deployment,) = k8s.by_kind(objs, "Deployment")
    (service,) = k8s.by_kind(objs, "Service")
    assert deployment["metadata"]["labels"] == {"keep": "1"}
    got = deployment["spec"]["template"]["spec"]["containers"]
    assert [x["name"] for x in got] == ["b", "c", "a"]
    b, c, a = got
    assert b == {"name": "b", "image": "reg/b@sha256:0000", "env": [{"name": "Z", "value": "9"}]}
    assert c == {"name": "c", "image": "k@sha256:1111"}
    assert a["image"] == "other/a:2"
    assert a["env"] == [
        {"name": "C", "value": "33"},
        {"name": "D", "value": "4"},
        {"name": "A", "value": "1"},
    ]
    assert a["ports"] == [{"containerPort": 2, "name": "p2x"}, {"containerPort": 1, "name": "p1"}]
    assert a["args"] == ["z"]
    assert service["spec"]["ports"] == [{"name": "bb", "port": 2}, {"name": "a", "port": 1}]


@pytest.mark.parametrize("check", CHECKS)
def test_component_and_delete(tmp_path: Path, check: str) -> None:
    base = tmp_path / "base"
    comp = tmp_path / "comp"
    top = tmp_path / "top"
    for d in (base, comp, top):
        d.mkdir()
    (base / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\n"
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: b}\n"
    )
    (base / "kustomization.yaml").write_text("resources: [cm.yaml]\n")
    (comp / "del.yaml").write_text(
        "$patch: delete\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n"
    )
    (comp / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1alpha1\nkind: Component\n"
        "patches: [{path: del.yaml}]\n"
    )
    (top / "kustomization.yaml").write_text("resources: [../base]\ncomponents: [../comp]\n")
    build = k8s.declared_objects if check == "structure" else k8s.kustomize_build
    assert [o["metadata"]["name"] for o in build(top)] == ["b"]
    (top / "kustomization.yaml").write_text("resources: [../comp]\n")
    if check == "structure":
        problems = k8s.kustomization_problems(top)
        assert any("kind Component, expected Kustomization" in p for p in problems), problems
    else:
        with pytest.raises(k8s.KustomizeError, match="expected kind != 'Component'"):
            k8s.kustomize_build(top)


def test_copy_of_the_tree_renders_like_the_original(tmp_path: Path) -> None:
    """The broken-manifest tests edit a copy; make sure a copy is a faithful stand-in."""
    copy = tmp_path / "k8s"
    shutil.copytree(k8s.K8S, copy)
    assert k8s.kustomize_build(copy / "overlays" / "prod") == k8s.kustomize_build(
        k8s.K8S / "overlays" / "prod"
    )
