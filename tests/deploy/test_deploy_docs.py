"""docs/deploy.md names what exists: overlays, the Secret, the volume, metric families."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gati import names
from tests.deploy import k8s_checks as k8s
from tests.deploy import kustomize

DOC = (k8s.REPO / "docs" / "deploy.md").read_text()
METRIC = re.compile(r"\b(Counter|Gauge|Histogram|Summary)\(\s*\"(gati_[a-z0-9_]+)\"")


def exposed_metrics() -> dict[str, set[str]]:
    """Service -> every sample name its metrics module exposes (prometheus_client rules)."""
    found: dict[str, set[str]] = {}
    for module in sorted((k8s.REPO / "services").glob("*/metrics.py")):
        names_ = found.setdefault(module.parent.name, set())
        for kind, name in METRIC.findall(module.read_text()):
            base = name.removesuffix("_total")
            names_ |= {
                "Counter": {f"{base}_total"},
                "Gauge": {name},
                "Histogram": {name, f"{name}_bucket", f"{name}_sum", f"{name}_count"},
                "Summary": {name, f"{name}_sum", f"{name}_count"},
            }[kind]
    return found


def test_overlays_and_components_are_documented() -> None:
    for overlay in k8s.overlays():
        assert f"overlays/{overlay.name}" in DOC
    for component in (k8s.K8S / "components").iterdir():
        assert f"components/{component.name}" in DOC


def test_the_secret_commands_match_the_manifests() -> None:
    """Every Secret the manifests read, by key or as a volume, is one the document has the
    operator create (and the tests' stand-ins, k8s.SECRETS, are those); the optional ones
    are documented as optional."""
    required, optional, volumes = set(), set(), set()
    for overlay in k8s.overlays():
        for w in k8s.workloads(kustomize.render(overlay)):
            spec = k8s.pod_template(w)["spec"]
            for c in k8s.containers(spec):
                for var in c.get("env", []):
                    ref = var.get("valueFrom", {}).get("secretKeyRef")
                    if ref:
                        (optional if ref.get("optional") else required).add(
                            (ref["name"], ref["key"])
                        )
            for v in spec.get("volumes", []):
                if "secret" in v:
                    volumes.add((v["secret"]["secretName"], bool(v["secret"].get("optional"))))
    assert required == {("gati-redis", "password")}
    assert optional == {
        ("gati-redis", "username"), ("gati-kafka", "username"), ("gati-kafka", "password")
    }  # fmt: skip
    assert volumes == {(name, False) for name in ("gati-signing", *k8s.TLS_SECRETS)}
    assert set(k8s.SECRETS) == {"gati-redis", "gati-signing", *k8s.TLS_SECRETS}
    assert "create secret generic gati-redis" in DOC
    assert "--from-literal=password=" in DOC
    assert "create secret generic gati-signing" in DOC
    assert "create secret generic gati-kafka" in DOC
    assert "create secret generic gati-cache-tls" in DOC  # by hand, without cert-manager
    for name in k8s.TLS_SECRETS:
        assert f"`{name}`" in DOC


def test_the_weights_volume_is_documented_as_mounted() -> None:
    objs = kustomize.render(k8s.K8S / "overlays" / "prod")
    weights = k8s.find(objs, "ConfigMap", "gati-config")["data"]["weights"]
    mount = weights.rsplit("/", 1)[0]
    assert 'claimName":"gati-weights' in DOC.replace(" ", "")
    assert f'mountPath":"{mount}' in DOC.replace(" ", "")
    assert f"weights: {weights}" in DOC
    for name in ("gati-inference", "gati-trainer"):
        spec = k8s.pod_template(k8s.find(objs, "Deployment", name))["spec"]
        claims = {v["name"] for v in spec["volumes"] if "persistentVolumeClaim" in v}
        mounts = [m for c in spec["containers"] for m in c["volumeMounts"] if m["name"] in claims]
        assert [(m["mountPath"], m.get("readOnly")) for m in mounts] == [(mount, True)]


def test_ports_in_the_table_are_the_services() -> None:
    rows = {line.split("|")[1].strip(" `"): line for line in DOC.splitlines() if "| `gati-" in line}
    for service, ports in {
        "gati-inference": (names.INFERENCE_PORT, names.INFERENCE_METRICS_PORT),
        "gati-cache": (names.CACHE_PORT, names.CACHE_METRICS_PORT),
        "gati-trainer": (names.TRAINER_PORT, names.TRAINER_METRICS_PORT),
    }.items():
        assert all(str(p) in rows[service] for p in ports), service
    assert names.ACTIVATIONS_TOPIC in DOC and names.TRAINER_GROUP in DOC


def test_documented_metrics_exist() -> None:
    """Every gati_* name in the docs is a sample some service exposes. Names of a service
    whose metrics module does not exist yet are reported, not failed."""
    exposed = exposed_metrics()
    everything = set().union(*exposed.values()) if exposed else set()
    documented = set(re.findall(r"\bgati_[a-z0-9_]+", DOC))
    pending = set()
    for name in sorted(documented):
        if name in everything:
            continue
        service = name.split("_")[1]
        if service in ("inference", "cache", "trainer") and service not in exposed:
            pending.add(name)
            continue
        pytest.fail(f"docs/deploy.md names {name}, which no service exposes")
    if pending:
        pytest.skip(f"metrics of services not written yet: {sorted(pending)}")


@pytest.mark.parametrize("overlay", k8s.overlays(), ids=lambda p: p.name)
def test_the_topic_first_selection_is_kafka_alone_and_complete(overlay: Path) -> None:
    """docs/deploy.md applies `-l 'KEY in (A,B,...)'` first, so the Job creates the topic
    before any service could (with 1 partition, replication 1): that selection must run
    Kafka and the Job on its own and hold no gati service."""
    (selector,) = re.findall(r"apply -k \S+ -l '([^']+)'", DOC)
    key, values = re.fullmatch(r"([\w./-]+) in \(([^)]*)\)", selector).groups()
    wanted = {v.strip() for v in values.split(",")}
    objs = kustomize.render(overlay)
    chosen = [o for o in objs if (o["metadata"].get("labels") or {}).get(key) in wanted]
    names_ = {k8s.describe(o) for o in chosen}
    assert {"Job/gati-kafka-topics", "StatefulSet/gati-kafka", "Service/gati-kafka"} <= names_
    assert not [o for o in k8s.workloads(chosen) if o["kind"] == "Deployment"]
    for workload in k8s.workloads(chosen):
        spec = k8s.pod_template(workload)["spec"]
        assert k8s.find(chosen, "ServiceAccount", spec["serviceAccountName"]) is not None
        for container in k8s.containers(spec):
            k8s.resolve_env(container, chosen, {})  # every ConfigMap key is in the selection
    pods = {e.name: e for e in k8s.pod_endpoints(chosen)}
    assert k8s.allows(chosen, pods["gati-kafka-topics"], pods["gati-kafka"], 9092)
    assert all(k8s.dns_allowed(chosen, p) for p in pods.values())
