"""Every overlay renders with the real kustomize, and every kustomization passes the lint.

Rendering is `kustomize build` or `kubectl kustomize` (tests/deploy/kustomize.py); where
neither is installed the tests that render skip, naming the missing tool. The structural lint
(tests/deploy/kustomization_lint.py) needs no tool and runs everywhere. What kustomize itself
does with a kustomization is not tested here: only that our overlays render.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.deploy import k8s_checks as k8s
from tests.deploy import kustomization_lint, kustomize

OVERLAYS = k8s.overlays()


def test_the_four_overlays_exist() -> None:
    assert [p.name for p in OVERLAYS] == ["dev", "prod", "sidecar", "tls"]


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_every_overlay_renders(overlay: Path) -> None:
    objs = kustomize.render(overlay)
    kinds = {o["kind"] for o in objs}
    assert {"Deployment", "StatefulSet", "Service", "ConfigMap", "NetworkPolicy"} <= kinds


def ids(overlay: str) -> list[str]:
    return sorted(k8s.describe(o) for o in kustomize.render(k8s.K8S / "overlays" / overlay))


def test_each_overlay_renders_what_it_promises_and_nothing_twice() -> None:
    """dev is the base's objects; prod adds disruption budgets; sidecar runs the cache inside
    the inference pod, so the cache service's own objects are deleted ($patch: delete); tls
    is prod with cert-manager's Issuers and Certificates (components/tls only patches)."""
    dev, prod, sidecar, tls = ids("dev"), ids("prod"), ids("sidecar"), ids("tls")
    for rendered in (dev, prod, sidecar, tls):
        assert len(rendered) == len(set(rendered))
    workloads = {i for i in dev if i.split("/")[0] in ("Deployment", "StatefulSet")}
    assert workloads == {
        "Deployment/gati-cache", "Deployment/gati-inference", "Deployment/gati-trainer",
        "StatefulSet/gati-kafka", "StatefulSet/gati-redis",
    }  # fmt: skip
    budgets = {f"PodDisruptionBudget/gati-{n}" for n in ("cache", "inference", "kafka")}
    assert set(prod) == set(dev) | budgets
    cache_own = {f"{kind}/gati-cache" for kind in ("Deployment", "Service", "ServiceAccount")}
    cache_own |= {"NetworkPolicy/gati-cache", "PodDisruptionBudget/gati-cache"}
    sidecar_policies = {
        "NetworkPolicy/gati-inference-sidecar-cache", "NetworkPolicy/gati-redis-from-inference"
    }  # fmt: skip
    assert set(sidecar) == (set(prod) - cache_own) | sidecar_policies
    issuers = {"Issuer/gati-selfsigned", "Issuer/gati-ca"}
    certificates = {f"Certificate/gati-{n}" for n in ("ca", "inference", "cache", "trainer")}
    assert set(tls) == set(prod) | issuers | certificates


def test_every_kustomization_passes_the_lint() -> None:
    assert kustomization_lint.problems(k8s.K8S) == []


# (what to break, how, the kustomization that must report it, the start of its message)
BREAKAGES = {
    "missing resource": (
        "base/cache/service.yaml",
        None,
        "base/cache",
        "service.yaml does not exist",
    ),
    "missing patch": (
        "overlays/dev/deployments.yaml",
        None,
        "overlays/dev",
        "deployments.yaml does not exist",
    ),
    "missing component": (
        "components/sidecar-cache/kustomization.yaml",
        None,
        "overlays/sidecar",
        "../../components/sidecar-cache has no kustomization.yaml",
    ),
    "named file not YAML": (
        "overlays/prod/configmaps.yaml",
        "data: [a\n",
        "overlays/prod",
        "configmaps.yaml is not YAML",
    ),
    "kustomization not YAML": (
        "overlays/dev/kustomization.yaml",
        "resources: [\n",
        "overlays/dev",
        "not YAML",
    ),
    "unnamed file": (
        "overlays/prod/extra.yaml",
        "kind: ConfigMap\n",
        "overlays/prod",
        "does not name extra.yaml",
    ),
}


@pytest.mark.parametrize("case", BREAKAGES)
def test_the_lint_reports_each_breakage(tree: Path, case: str) -> None:
    target, text, where, message = BREAKAGES[case]
    if text is None:
        (tree / target).unlink()
    else:
        (tree / target).write_text(text)
    problems = kustomization_lint.problems(tree)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{tree / where / 'kustomization.yaml'}: {message}"), problems


def test_kustomize_refusing_a_tree_is_an_error(tree: Path) -> None:
    """Only that the tool fails (exit status), not what it says."""
    (tree / "base" / "cache" / "service.yaml").unlink()
    with pytest.raises(kustomize.Error, match="exited"):
        kustomize.build(tree / "overlays" / "prod")


def test_copy_of_the_tree_renders_like_the_original(tree: Path) -> None:
    """The broken-manifest tests edit a copy; make sure a copy is a faithful stand-in."""
    assert kustomize.build(tree / "overlays" / "prod") == kustomize.build(
        k8s.K8S / "overlays" / "prod"
    )
