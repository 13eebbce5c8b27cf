"""Every rendered object validates strictly against Kubernetes 1.30, and broken ones do not."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.deploy import cert_manager_checks, kustomize
from tests.deploy import k8s_checks as k8s

OVERLAYS = k8s.overlays()
# the opt-in components' custom resources
CUSTOM_GROUPS = {"serving.kserve.io", "monitoring.coreos.com", "cert-manager.io"}


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_overlay_validates_strictly(overlay: Path) -> None:
    """Every object strictly; the custom resources an overlay may hold (cert-manager's in
    overlays/tls) have no schema offline and get cert_manager_checks' structural checks."""
    objs = kustomize.render(overlay)
    groups = k8s.OVERLAY_CUSTOM_GROUPS.get(overlay.name, frozenset())
    assert k8s.validate(objs, custom_groups=groups) == []
    assert {k8s.group_of(o) for o in objs} & CUSTOM_GROUPS <= groups
    if k8s.CERT_MANAGER_GROUP in groups:
        assert cert_manager_checks.structure(objs) == []


def test_every_resource_file_validates_strictly_on_its_own() -> None:
    """Runs with no kustomize installed: the files kustomizations list under `resources` are
    whole objects (patches are not), each valid before any patch applies."""
    objs = []
    for file in k8s.K8S.rglob("kustomization.yaml"):
        for ref in yaml.safe_load(file.read_text()).get("resources", []):
            if (file.parent / ref).is_file():
                objs += yaml.safe_load_all((file.parent / ref).read_text())
    assert {k8s.group_of(o) for o in objs} >= CUSTOM_GROUPS
    assert k8s.validate(objs, custom_groups=CUSTOM_GROUPS) == []


def test_removed_api_version_fails(tree: Path) -> None:
    """policy/v1beta1 PodDisruptionBudgets left Kubernetes in 1.25. kubernetes-validate's CLI
    only warns about a kind it has no schema for (exit status 0); our check fails it."""
    k8s.edit(tree / "overlays" / "prod" / "poddisruptionbudget.yaml", "policy/v1", "policy/v1beta1")
    errors = k8s.validate(kustomize.render(tree / "overlays" / "prod"))
    assert errors == [
        "PodDisruptionBudget/gati-inference: no schema for apiVersion policy/v1beta1 kind "
        "PodDisruptionBudget in Kubernetes 1.30.0 (wrong apiVersion or kind?)"
    ]


def test_unknown_field_fails(tree: Path) -> None:
    k8s.edit(
        tree / "base" / "cache" / "deployment.yaml",
        "          imagePullPolicy: IfNotPresent",
        "          imagePullPolicy: IfNotPresent\n          readOnlyRootFileSystem: true",
    )
    errors = k8s.validate(kustomize.render(tree / "overlays" / "prod"))
    assert len(errors) == 1
    assert "Deployment/gati-cache" in errors[0]
    assert "'readOnlyRootFileSystem' was unexpected" in errors[0]


def test_wrong_type_fails(tree: Path) -> None:
    k8s.edit(
        tree / "overlays" / "prod" / "horizontalpodautoscaler.yaml",
        "maxReplicas: 20",
        'maxReplicas: "20"',
    )
    errors = k8s.validate(kustomize.render(tree / "overlays" / "prod"))
    assert errors == [
        "HorizontalPodAutoscaler/gati-inference: spec.maxReplicas: '20' is not of type 'integer'"
    ]


def test_wrong_probe_shape_fails(tree: Path) -> None:
    """A grpc probe's port must be a number (named ports are for httpGet and tcpSocket)."""
    k8s.edit(
        tree / "components" / "sidecar-cache" / "deployment.yaml",
        "              port: 8011\n              service: gati.v1.CacheService\n"
        "            periodSeconds: 1",
        "              port: cache-grpc\n              service: gati.v1.CacheService\n"
        "            periodSeconds: 1",
    )
    errors = k8s.validate(kustomize.render(tree / "overlays" / "sidecar"))
    assert len(errors) == 1
    assert "initContainers.0.startupProbe.grpc.port" in errors[0]


def test_unknown_kind_fails() -> None:
    objs = [{"apiVersion": "v1", "kind": "Deploymnet", "metadata": {"name": "x"}}]
    assert "no schema" in k8s.validate(objs)[0]


def test_prometheus_operator_component(tree: Path) -> None:
    """The PodMonitors are custom resources: validated as such, kept out of the overlays."""
    overlay = tree / "overlays" / "monitoring"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        "resources: [../prod]\ncomponents: [../../components/prometheus-operator]\n"
    )
    objs = kustomize.render(overlay)
    monitors = k8s.by_kind(objs, "PodMonitor")
    assert len(monitors) == 3
    errors = k8s.validate(objs)
    assert len(errors) == 3 and all("no schema" in e and "PodMonitor" in e for e in errors)
    assert k8s.validate(objs, custom_groups={"monitoring.coreos.com"}) == []
    pods = {w["metadata"]["name"]: k8s.pod_template(w) for w in k8s.workloads(objs)}
    for monitor in monitors:
        selected = [
            name
            for name, t in pods.items()
            if k8s.selector_matches(monitor["spec"]["selector"], t["metadata"]["labels"])
        ]
        assert selected == [monitor["metadata"]["name"]]
        port_names = {p.get("name") for p in k8s.container_ports(pods[selected[0]]["spec"])}
        assert "metrics" in port_names
        assert {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]} >= {"metrics"}


def test_no_validated_overlay_includes_custom_resources() -> None:
    """Beyond cert-manager's in overlays/tls, which are checked by hand (test above)."""
    for overlay in OVERLAYS:
        kustomization = yaml.safe_load((overlay / "kustomization.yaml").read_text())
        assert not any("prometheus" in c for c in kustomization.get("components", []))
        custom = {k8s.group_of(o) for o in kustomize.render(overlay)} & CUSTOM_GROUPS
        assert custom <= k8s.OVERLAY_CUSTOM_GROUPS.get(overlay.name, frozenset())
