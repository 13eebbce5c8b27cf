"""Every overlay renders, and the pure-Python renderer agrees with `kubectl kustomize`."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from tests.deploy import k8s_checks as k8s
from tests.deploy import kustomize_lite as kl

OVERLAYS = k8s.overlays()
needs_kubectl = pytest.mark.skipif(k8s.kubectl() is None, reason="kubectl is not installed")


def test_the_three_overlays_exist() -> None:
    assert [p.name for p in OVERLAYS] == ["dev", "prod", "sidecar"]


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_python_renderer_builds_every_overlay(overlay: Path) -> None:
    objs = k8s.render_python(overlay)
    kinds = {o["kind"] for o in objs}
    assert {"Deployment", "StatefulSet", "Service", "ConfigMap", "NetworkPolicy"} <= kinds


def _by_id(objs: list[dict]) -> dict:
    """Objects by resource id: kubectl sorts its output by kind, the order means nothing."""
    return {kl.object_id(o): o for o in objs}


@needs_kubectl
@pytest.mark.parametrize(
    "path",
    [*OVERLAYS, k8s.K8S / "base"],
    ids=lambda p: p.name,
)
def test_renderers_agree(path: Path) -> None:
    ours = _by_id(k8s.render_python(path))
    theirs = _by_id(k8s.render_kubectl(path))
    assert sorted(ours) == sorted(theirs)
    for key, obj in ours.items():
        assert obj == theirs[key], f"{key} differs between kustomize_lite and kubectl"


def test_every_kustomization_stays_within_the_subset() -> None:
    """Components included: the renderer rejects any field it does not implement."""
    for file in k8s.K8S.rglob("kustomization.yaml"):
        data = yaml.safe_load(file.read_text())
        assert set(data) <= kl.FIELDS, f"{file}: {set(data) - kl.FIELDS}"


def test_unsupported_field_is_refused(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("namePrefix: x-\nresources: []\n")
    with pytest.raises(kl.KustomizeError, match="namePrefix"):
        kl.build(tmp_path)


def test_duplicate_objects_are_refused(tmp_path: Path) -> None:
    cm = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n"
    (tmp_path / "a.yaml").write_text(cm)
    (tmp_path / "b.yaml").write_text(cm)
    (tmp_path / "kustomization.yaml").write_text("resources: [a.yaml, b.yaml]\n")
    with pytest.raises(kl.KustomizeError, match="defined twice"):
        kl.build(tmp_path)


def test_patch_matching_nothing_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n")
    (tmp_path / "p.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: b}\n")
    (tmp_path / "kustomization.yaml").write_text("resources: [a.yaml]\npatches: [{path: p.yaml}]\n")
    with pytest.raises(kl.KustomizeError, match="matches no object"):
        kl.build(tmp_path)


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
    objs = kl.build(_write_case(tmp_path))
    deployment, service = objs
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


@needs_kubectl
def test_strategic_merge_matches_kubectl(tmp_path: Path) -> None:
    path = _write_case(tmp_path)
    assert _by_id(k8s.render_python(path)) == _by_id(k8s.render_kubectl(path))


def test_component_and_delete(tmp_path: Path) -> None:
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
    assert [o["metadata"]["name"] for o in kl.build(top)] == ["b"]
    if k8s.kubectl():
        assert k8s.render_kubectl(top) == kl.build(top)
    (top / "kustomization.yaml").write_text("resources: [../comp]\n")
    with pytest.raises(kl.KustomizeError, match="expected Kustomization"):
        kl.build(top)


def test_copy_of_the_tree_renders_like_the_original(tmp_path: Path) -> None:
    """The broken-manifest tests edit a copy; make sure a copy is a faithful stand-in."""
    copy = tmp_path / "k8s"
    shutil.copytree(k8s.K8S, copy)
    assert k8s.render_python(copy / "overlays" / "prod") == k8s.render_python(
        k8s.K8S / "overlays" / "prod"
    )
