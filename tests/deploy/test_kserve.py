"""components/kserve: a KServe ServingRuntime and InferenceService for the inference service.

No cluster and no KServe CRD schema offline: the two custom resources get the structural
checks of `kserve_checks`, every other object of the render still validates strictly, and
broken copies must fail. Rendered on top of base (exact comparison with base/inference) and
of prod (how an overlay uses it: docs/deploy.md).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.deploy import k8s_checks as k8s
from tests.deploy import kserve_checks as ks
from tests.deploy import kustomize

COMPONENT = "../../components/kserve"
PROD_IMAGE = "registry.example.com/gati/gati-inference:0.1.0"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A private copy of deploy/k8s with two overlays that include the component."""
    copy = k8s.private_copy(tmp_path)
    on_base = copy / "overlays" / "kserve-base"
    on_base.mkdir()
    (on_base / "kustomization.yaml").write_text(
        f"resources: [../../base]\ncomponents: [{COMPONENT}]\n"
    )
    on_prod = copy / "overlays" / "kserve"
    on_prod.mkdir()
    # As docs/deploy.md says: the component comes after prod set its images, so name it again.
    (on_prod / "kustomization.yaml").write_text(
        f"resources: [../prod]\ncomponents: [{COMPONENT}]\nimages:\n"
        "  - name: gati-inference\n"
        "    newName: registry.example.com/gati/gati-inference\n"
        "    newTag: 0.1.0\n"
    )
    return copy


def _render(tree: Path, overlay: str) -> list[dict]:
    return kustomize.render(tree / "overlays" / overlay)


def _base(tree: Path) -> list[dict]:
    return kustomize.render(tree / "base")


@pytest.mark.parametrize("overlay", ["kserve-base", "kserve"])
def test_everything_but_the_kserve_objects_validates_strictly(tree: Path, overlay: str) -> None:
    objs = _render(tree, overlay)
    assert sorted(k8s.describe(o) for o in objs if k8s.group_of(o) == ks.GROUP) == [
        "InferenceService/gati-inference",
        "ServingRuntime/gati-inference",
    ]
    errors = k8s.validate(objs)
    assert len(errors) == 2 and all("no schema" in e for e in errors), errors
    assert k8s.validate(objs, custom_groups={ks.GROUP}) == []


@pytest.mark.parametrize("overlay", ["kserve-base", "kserve"])
def test_kserve_objects_are_sound(tree: Path, overlay: str) -> None:
    objs = _render(tree, overlay)
    assert ks.structure(objs) == []
    assert ks.network(objs) == []


def test_runtime_is_base_inference(tree: Path) -> None:
    """Same image, environment, probes, resources, mounts, pod settings and autoscaling as
    base/inference, plus the REST port; the objects KServe creates itself are gone."""
    assert ks.drift(_render(tree, "kserve-base"), _base(tree), image="gati-inference:0.1.0") == []


def test_on_prod_the_runtime_gets_the_registry_image(tree: Path) -> None:
    objs = _render(tree, "kserve")
    prod = _render(tree, "prod")
    (container,) = k8s.pod_template(k8s.find(prod, "Deployment", "gati-inference"))["spec"][
        "containers"
    ]
    assert container["image"] == PROD_IMAGE
    assert ks.drift(objs, _base(tree), image=PROD_IMAGE) == []
    # The budget and the autoscaler-free rest of prod stay; KServe's pods keep gati's labels.
    assert k8s.find(objs, "PodDisruptionBudget", "gati-inference") is not None
    (runtime,) = ks.runtimes(objs)
    (isvc,) = ks.inference_services(objs)
    pod = ks.predictor_pod(runtime, isvc)
    budget = k8s.find(objs, "PodDisruptionBudget", "gati-inference")
    assert k8s.selector_matches(budget["spec"]["selector"], pod["metadata"]["labels"])


def test_ports_are_the_open_inference_protocols() -> None:
    objs = kustomize.render(k8s.K8S / "base")
    runtime = yaml.safe_load(
        (k8s.K8S / "components" / "kserve" / "servingruntime.yaml").read_text()
    )
    (container,) = runtime["spec"]["containers"]
    assert [(p["name"], p["containerPort"]) for p in container["ports"]] == [
        ("http", ks.HTTP_PORT),
        ("grpc", 8001),
        ("metrics", 8002),
    ]
    assert k8s.find(objs, "Deployment", "gati-inference") is not None  # base is untouched


# --- broken copies must fail ---------------------------------------------------------------
RUNTIME = Path("components") / "kserve" / "servingruntime.yaml"
ISVC = Path("components") / "kserve" / "inferenceservice.yaml"


@pytest.mark.parametrize(
    ("file", "old", "new", "expected"),
    [
        pytest.param(
            RUNTIME,
            "        readOnlyRootFilesystem: true",
            "        readOnlyRootFileSystem: true",
            "'readOnlyRootFileSystem' was unexpected",
            id="misspelt-container-field",
        ),
        pytest.param(
            RUNTIME,
            "  protocolVersions:",
            "  protocolVersion:",
            "unknown field(s) ['protocolVersion']",
            id="misspelt-runtime-field",
        ),
        pytest.param(RUNTIME, "    - grpc-v2", "    - grpc-v3", "not among", id="unknown-protocol"),
        pytest.param(
            RUNTIME,
            "apiVersion: serving.kserve.io/v1alpha1",
            "apiVersion: serving.kserve.io/v1beta1",
            "expected serving.kserve.io/v1alpha1",
            id="wrong-api-version",
        ),
        pytest.param(
            RUNTIME,
            "    - name: kserve-container",
            "    - name: gati",
            "exactly one container named kserve-container",
            id="container-name",
        ),
        pytest.param(
            RUNTIME,
            "          containerPort: 8000",
            "          containerPort: 8080",
            "the first port must be REST 8000",
            id="rest-port",
        ),
        pytest.param(
            RUNTIME,
            "        - name: grpc\n",
            "        - name: h2\n",
            "named *grpc*",
            id="grpc-port-name",
        ),
        pytest.param(
            RUNTIME,
            "        periodSeconds: 5",
            '        periodSeconds: "5"',
            "'5' is not of type 'integer'",
            id="wrong-type",
        ),
        pytest.param(
            RUNTIME,
            "        - name: GATI_HTTP_PORT",
            "        - name: GATI_REST_PORT",
            "not settings of the inference service: ['GATI_REST_PORT']",
            id="unknown-setting",
        ),
        pytest.param(
            RUNTIME,
            '          value: "8000"',
            '          value: "80000"',
            "refuses its settings",
            id="bad-setting",
        ),
        pytest.param(
            ISVC,
            "      runtime: gati-inference",
            "      runtime: gati",
            "names no ServingRuntime",
            id="runtime-reference",
        ),
        pytest.param(
            ISVC,
            "      protocolVersion: v2\n",
            "",
            "protocolVersion must be set",
            id="protocol-unset",
        ),
        pytest.param(
            ISVC,
            "        name: gati\n",
            "        name: pytorch\n",
            "does not support format",
            id="model-format",
        ),
        pytest.param(
            ISVC,
            "serving.kserve.io/deploymentMode: RawDeployment",
            "serving.kserve.io/deploymentMode: Serverless",
            "two ports need one of",
            id="knative-mode",
        ),
        pytest.param(
            ISVC,
            "    scaleMetric: cpu",
            "    scaleMetric: gpu",
            "scaleMetric 'gpu'",
            id="scale-metric",
        ),
        pytest.param(
            ISVC,
            "    terminationGracePeriodSeconds: 30",
            "    terminationGracePeriod: 30",
            "'terminationGracePeriod' was unexpected",
            id="misspelt-pod-field",
        ),
    ],
)
def test_broken_structure_fails(tree: Path, file: Path, old: str, new: str, expected: str) -> None:
    k8s.edit(tree / file, old, new)
    errors = ks.structure(_render(tree, "kserve-base"))
    assert any(expected in e for e in errors), errors


@pytest.mark.parametrize(
    ("file", "old", "new", "expected"),
    [
        pytest.param(
            RUNTIME, '          value: "1"', '          value: "2"', "env differs", id="env"
        ),
        pytest.param(
            RUNTIME,
            "          memory: 1536Mi\n        limits:",
            "          memory: 1Gi\n        limits:",
            "resources differs",
            id="resources",
        ),
        pytest.param(
            RUNTIME,
            "image: gati-inference:0.1.0",
            "image: other:0.1.0",
            "runtime image",
            id="image",
        ),
        pytest.param(
            ISVC, "    maxReplicas: 6", "    maxReplicas: 9", "maxReplicas 9", id="autoscaling"
        ),
        pytest.param(
            ISVC,
            "      runAsUser: 10001",
            "      runAsUser: 0",
            "securityContext differs",
            id="pod-security",
        ),
        pytest.param(
            ISVC,
            "      app.kubernetes.io/part-of: gati\n    annotations:",
            "      app.kubernetes.io/part-of: kserve\n    annotations:",
            "labels differ",
            id="pod-labels",
        ),
    ],
)
def test_drift_from_base_inference_fails(
    tree: Path, file: Path, old: str, new: str, expected: str
) -> None:
    k8s.edit(tree / file, old, new)
    errors = ks.drift(_render(tree, "kserve-base"), _base(tree), image="gati-inference:0.1.0")
    assert any(expected in e for e in errors), errors


def test_a_network_policy_without_the_rest_port_fails(tree: Path) -> None:
    k8s.edit(
        tree / "components" / "kserve" / "networkpolicy.yaml",
        "        - protocol: TCP\n          port: http\n",
        "",
    )
    assert ks.network(_render(tree, "kserve-base")) == [
        f"world cannot reach gati-inference on {ks.HTTP_PORT}"
    ]


def test_kept_base_deployment_is_drift(tree: Path) -> None:
    k8s.edit(
        tree / "components" / "kserve" / "kustomization.yaml",
        "  - path: delete-inference-deployment.yaml\n",
        "",
    )
    errors = ks.drift(_render(tree, "kserve-base"), _base(tree), image="gati-inference:0.1.0")
    assert "Deployment/gati-inference is still rendered: KServe creates its own" in errors


def test_no_validated_overlay_includes_kserve() -> None:
    for overlay in k8s.overlays():
        kustomization = yaml.safe_load((overlay / "kustomization.yaml").read_text())
        assert not any("kserve" in c for c in kustomization.get("components", []))
        assert not ks.runtimes(kustomize.render(overlay))


def test_the_component_is_documented() -> None:
    doc = (k8s.REPO / "docs" / "deploy.md").read_text()
    assert "components/kserve" in doc
    assert "- ../../components/kserve" in doc
    assert "gati-inference-predictor" in doc
