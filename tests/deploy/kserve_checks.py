"""Offline checks of the KServe objects of components/kserve (ServingRuntime, InferenceService).

kubernetes-validate knows Kubernetes' own kinds only, and no KServe CRD is available offline,
so these two custom resources are checked here by hand, as far as that can be honest:

- `structure`: the fields KServe's Go types define (serving.kserve.io v1alpha1 ServingRuntime,
  v1beta1 InferenceService; KServe 0.12 or later) and nothing else, the required ones present;
  every part that *is* a Kubernetes type (the runtime's containers and volumes, the predictor's
  pod-level fields) assembled into a Pod and validated strictly against Kubernetes 1.30; the
  protocol versions, the model format and the runtime the InferenceService names, resolved the
  way KServe's controller resolves them; the two Open Inference Protocol ports; a deployment
  mode that allows two ports; the serving container's GATI_* environment, resolved through the
  rendered ConfigMaps, is a configuration `gati serve inference` accepts, on 8001 and 8000.
- `drift`: the runtime's container is base/inference's (image, environment, probes,
  resources, mounts, security), plus the REST port; the predictor's pod labels, annotations,
  service account, security context and autoscaling are base/inference's; the objects KServe
  creates itself (Deployment, Service, HPA) are gone from the render.

What this cannot see: KServe's admission webhooks and its controller's defaulting. The shapes
were read from KServe's sources (pkg/apis/serving), not tried on a cluster.
"""

from __future__ import annotations

import copy
from typing import Any

import kubernetes_validate

from gati import config, names
from services.inference.config import InferenceConfig
from tests.deploy import k8s_checks as k8s

Obj = dict[str, Any]

GROUP = "serving.kserve.io"
RUNTIME_API = f"{GROUP}/v1alpha1"
ISVC_API = f"{GROUP}/v1beta1"
CONTAINER = "kserve-container"  # the name KServe merges the predictor's container into
HTTP_PORT = 8000  # the Open Inference Protocol's REST port (Triton's), beside gRPC 8001
HTTP_ENV = "GATI_HTTP_PORT"  # REST is off (-1) unless this setting names a port
PROTOCOLS = {"v1", "v2", "grpc-v1", "grpc-v2"}
SCALE_METRICS = {"cpu", "memory", "concurrency", "rps"}
# Modes that run a plain Deployment + Service: Knative allows one port per container.
MULTI_PORT_MODES = {"RawDeployment", "Standard"}
MODE_ANNOTATION = f"{GROUP}/deploymentMode"

# ServingRuntimeSpec (v1alpha1), its inlined ServingRuntimePodSpec included.
RUNTIME_SPEC_FIELDS = {
    "supportedModelFormats", "multiModel", "disabled", "protocolVersions", "workerSpec",
    "containers", "volumes", "nodeSelector", "affinity", "tolerations", "labels",
    "annotations", "imagePullSecrets", "hostIPC", "schedulerName", "resourceClaims",
    "grpcEndpoint", "grpcDataEndpoint", "httpDataEndpoint", "replicas", "storageHelper",
    "builtInAdapter",
}  # fmt: skip
# Of those, the ones that are plain core/v1 PodSpec fields (validated inside a Pod).
RUNTIME_POD_FIELDS = {
    "containers", "volumes", "nodeSelector", "affinity", "tolerations", "imagePullSecrets",
    "hostIPC", "schedulerName", "resourceClaims",
}  # fmt: skip
MODEL_FORMAT_FIELDS = {"name", "version", "autoSelect", "priority"}
ISVC_SPEC_FIELDS = {"predictor", "explainer", "transformer"}
# PredictorSpec's own fields and the inlined ComponentExtensionSpec; the rest of a predictor
# is an inlined PodSpec.
PREDICTOR_FIELDS = {
    "sklearn", "xgboost", "tensorflow", "pytorch", "triton", "onnx", "huggingface", "pmml",
    "lightgbm", "paddle", "model", "storageUris", "storageContainerName", "workerSpec",
    "minReplicas", "maxReplicas", "scaleTarget", "scaleMetric", "scaleMetricType",
    "autoScaling", "containerConcurrency", "timeout", "canaryTrafficPercent", "logger",
    "batcher", "labels", "annotations", "deploymentStrategy",
}  # fmt: skip
# ModelSpec: its own fields and PredictorExtensionSpec's; the rest is an inlined Container.
MODEL_FIELDS = {
    "modelFormat", "runtime", "storageUri", "runtimeVersion", "protocolVersion", "storage",
    "confidential",
}  # fmt: skip


def runtimes(objs: list[Obj]) -> list[Obj]:
    return [o for o in objs if o.get("kind") == "ServingRuntime"]


def inference_services(objs: list[Obj]) -> list[Obj]:
    return [o for o in objs if o.get("kind") == "InferenceService"]


def _unknown(where: str, obj: Obj, allowed: set[str]) -> list[str]:
    extra = sorted(set(obj) - allowed)
    return [f"{where}: unknown field(s) {extra}"] if extra else []


def predictor_pod(runtime: Obj, isvc: Obj) -> Obj:
    """The Pod KServe would build: the runtime's pod fields, then the predictor's own pod
    fields, the model's container fields merged into the serving container."""
    spec = {k: copy.deepcopy(v) for k, v in runtime["spec"].items() if k in RUNTIME_POD_FIELDS}
    predictor = isvc["spec"].get("predictor", {})
    for key, value in predictor.items():
        if key not in PREDICTOR_FIELDS:
            spec[key] = copy.deepcopy(value)
    model = predictor.get("model", {})
    overrides = {k: v for k, v in model.items() if k not in MODEL_FIELDS}
    for container in spec.get("containers", []):
        if container.get("name") == CONTAINER:
            container.update(copy.deepcopy(overrides))
    labels = {**runtime["spec"].get("labels", {}), **predictor.get("labels", {})}
    annotations = {**runtime["spec"].get("annotations", {}), **predictor.get("annotations", {})}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{isvc['metadata']['name']}-predictor",
            "labels": labels,
            "annotations": annotations,
        },
        "spec": spec,
    }


def structure(objs: list[Obj], version: str = k8s.KUBERNETES_VERSION) -> list[str]:
    """Problems with the KServe objects' shape; empty when sound (or when there are none)."""
    errors: list[str] = []
    by_name = {}
    for rt in runtimes(objs):
        where = k8s.describe(rt)
        if rt.get("apiVersion") != RUNTIME_API:
            errors.append(f"{where}: apiVersion {rt.get('apiVersion')}, expected {RUNTIME_API}")
        spec = rt.get("spec") or {}
        errors += _unknown(f"{where}: spec", spec, RUNTIME_SPEC_FIELDS)
        if not spec.get("containers"):
            errors.append(f"{where}: spec.containers is required")
        if [c.get("name") for c in spec.get("containers", [])].count(CONTAINER) != 1:
            errors.append(f"{where}: needs exactly one container named {CONTAINER}")
        formats = spec.get("supportedModelFormats") or []
        if not formats:
            errors.append(f"{where}: spec.supportedModelFormats is empty")
        for i, f in enumerate(formats):
            errors += _unknown(f"{where}: spec.supportedModelFormats.{i}", f, MODEL_FORMAT_FIELDS)
            if not isinstance(f.get("name"), str) or not f.get("name"):
                errors.append(f"{where}: spec.supportedModelFormats.{i}.name is required")
            if "version" in f and not isinstance(f["version"], str):
                errors.append(f"{where}: spec.supportedModelFormats.{i}.version must be a string")
        protocols = spec.get("protocolVersions") or []
        if bad := sorted(set(protocols) - PROTOCOLS):
            errors.append(f"{where}: protocolVersions {bad} not among {sorted(PROTOCOLS)}")
        if not {"v2", "grpc-v2"} <= set(protocols):
            errors.append(f"{where}: protocolVersions must list v2 and grpc-v2 (REST and gRPC)")
        for container in spec.get("containers", []):
            if container.get("name") == CONTAINER:
                errors += [f"{where}: {e}" for e in settings(container, objs, spec)]
        by_name[rt.get("metadata", {}).get("name")] = rt

    for isvc in inference_services(objs):
        where = k8s.describe(isvc)
        if isvc.get("apiVersion") != ISVC_API:
            errors.append(f"{where}: apiVersion {isvc.get('apiVersion')}, expected {ISVC_API}")
        spec = isvc.get("spec") or {}
        errors += _unknown(f"{where}: spec", spec, ISVC_SPEC_FIELDS)
        predictor = spec.get("predictor")
        if not isinstance(predictor, dict):
            errors.append(f"{where}: spec.predictor is required")
            continue
        model = predictor.get("model")
        if not isinstance(model, dict):
            errors.append(f"{where}: spec.predictor.model is required (a custom runtime)")
            continue
        fmt = model.get("modelFormat") or {}
        errors += _unknown(f"{where}: spec.predictor.model.modelFormat", fmt, {"name", "version"})
        if not fmt.get("name"):
            errors.append(f"{where}: spec.predictor.model.modelFormat.name is required")
        rt = by_name.get(model.get("runtime"))
        if rt is None:
            errors.append(
                f"{where}: spec.predictor.model.runtime {model.get('runtime')!r} names no "
                f"ServingRuntime here (have {sorted(by_name)})"
            )
            continue
        formats = rt["spec"].get("supportedModelFormats") or []
        if not any(
            f.get("name") == fmt.get("name")
            and ("version" not in fmt or fmt["version"] == f.get("version"))
            for f in formats
        ):
            errors.append(f"{where}: runtime {k8s.describe(rt)} does not support format {fmt}")
        protocol = model.get("protocolVersion")
        if protocol is None:
            # KServe's default for a model is v1, which a v2-only runtime does not serve.
            errors.append(f"{where}: spec.predictor.model.protocolVersion must be set (v2)")
        elif protocol not in rt["spec"].get("protocolVersions", []):
            errors.append(f"{where}: runtime does not list protocolVersion {protocol!r}")
        if "storageUri" in model or "storage" in model or "storageUris" in predictor:
            errors.append(f"{where}: weights come from the gati-weights volume, not storage")
        mode = (isvc.get("metadata", {}).get("annotations") or {}).get(MODE_ANNOTATION)
        if mode not in MULTI_PORT_MODES:
            errors.append(
                f"{where}: annotation {MODE_ANNOTATION} is {mode!r}; two ports need one of "
                f"{sorted(MULTI_PORT_MODES)} (Knative allows one port per container)"
            )
        metric = predictor.get("scaleMetric")
        if metric is not None and metric not in SCALE_METRICS:
            errors.append(f"{where}: scaleMetric {metric!r} not among {sorted(SCALE_METRICS)}")
        low, high = predictor.get("minReplicas", 1), predictor.get("maxReplicas", 0)
        for key in ("minReplicas", "maxReplicas", "scaleTarget"):
            if key in predictor and (not isinstance(predictor[key], int) or predictor[key] < 0):
                errors.append(f"{where}: spec.predictor.{key} must be an integer >= 0")
        if isinstance(low, int) and isinstance(high, int) and high and low > high:
            errors.append(f"{where}: minReplicas {low} > maxReplicas {high}")

        pod = predictor_pod(rt, isvc)
        try:
            kubernetes_validate.validate(pod, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            errors.append(f"{where} with {k8s.describe(rt)}: as a Pod, {path}: {exc.message}")
        containers = pod["spec"].get("containers", [])
        container = next((c for c in containers if c.get("name") == CONTAINER), {})
        ports = container.get("ports", [])
        if not ports or ports[0].get("containerPort") != HTTP_PORT:
            errors.append(
                f"{k8s.describe(rt)}: the first port must be REST {HTTP_PORT} (KServe's Service "
                f"maps the first port to 80), found {[p.get('containerPort') for p in ports]}"
            )
        grpc_ports = [p for p in ports if p.get("containerPort") == names.INFERENCE_PORT]
        if len(grpc_ports) != 1 or "grpc" not in grpc_ports[0].get("name", ""):
            errors.append(
                f"{k8s.describe(rt)}: needs gRPC port {names.INFERENCE_PORT} named *grpc* "
                "(KServe gives such a Service port appProtocol h2c)"
            )
    return errors


def _base_inference(base_objs: list[Obj]) -> tuple[Obj, Obj, Obj]:
    deployment = k8s.find(base_objs, "Deployment", "gati-inference")
    hpa = k8s.find(base_objs, "HorizontalPodAutoscaler", "gati-inference")
    if deployment is None or hpa is None:
        raise KeyError("base/inference's Deployment and HorizontalPodAutoscaler not rendered")
    template = k8s.pod_template(deployment)
    (container,) = template["spec"]["containers"]
    return template, container, hpa


def settings(container: Obj, objs: list[Obj], pod_spec: Obj | None = None) -> list[str]:
    """The container's environment, resolved through the ConfigMaps of `objs` (and the files
    of the Secrets it mounts from `pod_spec`'s volumes: the runtime's), is a valid
    configuration of the inference service that serves gRPC on 8001 and REST on 8000."""
    declared = {e["name"] for e in container.get("env", []) if e["name"].startswith("GATI_")}
    unknown = declared - config.env_names(InferenceConfig)
    if unknown:
        return [f"not settings of the inference service: {sorted(unknown)}"]
    try:
        env = k8s.resolve_env(container, objs, k8s.SECRETS)
        env = k8s.mounted_env(container, pod_spec or {}, env, k8s.SECRETS)
        loaded = config.load(InferenceConfig, environ=env)
    except Exception as exc:  # the service would refuse to start with these settings
        return [f"the inference service refuses its settings: {exc}"]
    got = (loaded.port, loaded.http_port)
    if got != (names.INFERENCE_PORT, HTTP_PORT):
        return [f"it would serve gRPC, REST on {got}, not {names.INFERENCE_PORT}, {HTTP_PORT}"]
    return []


def drift(objs: list[Obj], base_objs: list[Obj], image: str | None = None) -> list[str]:
    """Where the KServe objects differ from base/inference (`base_objs`: base rendered).

    `image`: the image the runtime must run; by default base/inference's image name (from
    any registry, any tag or digest)."""
    errors: list[str] = []
    template, base, hpa = _base_inference(base_objs)
    for kind in ("Deployment", "Service", "HorizontalPodAutoscaler"):
        if k8s.find(objs, kind, "gati-inference") is not None:
            errors.append(f"{kind}/gati-inference is still rendered: KServe creates its own")
    if len(runtimes(objs)) != 1 or len(inference_services(objs)) != 1:
        return [*errors, "expected one ServingRuntime and one InferenceService"]
    (rt,), (isvc,) = runtimes(objs), inference_services(objs)
    container = next((c for c in rt["spec"]["containers"] if c.get("name") == CONTAINER), {})
    if image is not None:
        if container.get("image") != image:
            errors.append(f"runtime image {container.get('image')!r}, expected {image!r}")
    else:
        ours = k8s.split_image(container.get("image", ""))[0].rsplit("/", 1)[-1]
        theirs = k8s.split_image(base["image"])[0].rsplit("/", 1)[-1]
        if ours != theirs:
            errors.append(f"runtime image {container.get('image')!r} is not {theirs}")
    env = [e for e in base.get("env", []) if e["name"] != HTTP_ENV]
    env.append({"name": HTTP_ENV, "value": str(HTTP_PORT)})
    if container.get("env") != env:
        errors.append(
            f"runtime container env differs from base/inference's plus {HTTP_ENV}={HTTP_PORT}: "
            f"{container.get('env')!r} != {env!r}"
        )
    for key in (
        "command", "args", "envFrom", "imagePullPolicy", "resources", "startupProbe",
        "readinessProbe", "livenessProbe", "lifecycle", "securityContext", "volumeMounts",
        "workingDir",
    ):  # fmt: skip
        if container.get(key) != base.get(key):
            errors.append(
                f"runtime container {key} differs from base/inference: "
                f"{container.get(key)!r} != {base.get(key)!r}"
            )
    ports = {(p.get("name"), p["containerPort"]) for p in container.get("ports", [])}
    expected = {(p.get("name"), p["containerPort"]) for p in base.get("ports", [])}
    expected.add(("http", HTTP_PORT))
    if ports != expected:
        errors.append(f"runtime ports {sorted(ports)}, expected {sorted(expected)}")
    if rt["spec"].get("volumes") != template["spec"].get("volumes"):
        errors.append("runtime volumes differ from base/inference's pod volumes")
    predictor = isvc["spec"]["predictor"]
    if predictor.get("labels") != template["metadata"].get("labels"):
        errors.append("predictor labels differ from base/inference's pod labels")
    if predictor.get("annotations") != template["metadata"].get("annotations"):
        errors.append("predictor annotations differ from base/inference's pod annotations")
    pod_fields = set(template["spec"]) - {"containers", "initContainers", "volumes"}
    for key in sorted(pod_fields | (set(predictor) - PREDICTOR_FIELDS)):
        if predictor.get(key) != template["spec"].get(key):
            errors.append(
                f"predictor {key} differs from base/inference's pod: "
                f"{predictor.get(key)!r} != {template['spec'].get(key)!r}"
            )
    (metric,) = hpa["spec"]["metrics"]
    scaling = {
        "minReplicas": hpa["spec"].get("minReplicas", 1),
        "maxReplicas": hpa["spec"]["maxReplicas"],
        "scaleMetric": metric["resource"]["name"],
        "scaleTarget": metric["resource"]["target"]["averageUtilization"],
    }
    for key, value in scaling.items():
        if predictor.get(key) != value:
            errors.append(f"predictor {key} {predictor.get(key)!r}, base autoscaler {value!r}")
    return errors


def network(objs: list[Obj]) -> list[str]:
    """The NetworkPolicies of the render let the predictor pods do inference's job: clients
    in on REST and gRPC, Prometheus in on metrics, out to the cache service and Kafka, DNS."""
    errors: list[str] = []
    pods = {e.name: e for e in k8s.pod_endpoints(objs)}
    by_name = {rt["metadata"].get("name"): rt for rt in runtimes(objs)}
    for isvc in inference_services(objs):
        rt = by_name.get(isvc["spec"].get("predictor", {}).get("model", {}).get("runtime"))
        if rt is not None:
            pod = predictor_pod(rt, isvc)
            labels = pod["metadata"]["labels"]
            me = k8s.Endpoint(
                labels.get("app.kubernetes.io/name", pod["metadata"]["name"]),
                tuple(sorted(labels.items())),
                pod_spec=pod["spec"],
            )
            wanted = [
                (k8s.WORLD, me, HTTP_PORT, True),
                (k8s.WORLD, me, names.INFERENCE_PORT, True),
                (k8s.PROMETHEUS, me, names.INFERENCE_METRICS_PORT, True),
                (k8s.WORLD, me, names.INFERENCE_METRICS_PORT, False),
            ]
            if "gati-cache" in pods:
                wanted.append((me, pods["gati-cache"], names.CACHE_PORT, True))
            if "gati-kafka" in pods:
                wanted.append((me, pods["gati-kafka"], 9092, True))
            for src, dst, port, allowed in wanted:
                if k8s.allows(objs, src, dst, port) != allowed:
                    verb = "cannot" if allowed else "can"
                    errors.append(f"{src.name} {verb} reach {dst.name} on {port}")
            if not k8s.dns_allowed(objs, me):
                errors.append(f"{me.name} (KServe predictor) cannot resolve names")
    return errors
