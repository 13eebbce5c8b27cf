"""The manifests and the services agree: names, ports, settings, health, network paths.

Each rendered overlay is read the way the kubelet and the services would read it: a gati
container's environment is resolved through its ConfigMaps and turned into the service's
own config class with `gati.config.load`, so a renamed setting, a wrong port or a value the
service would refuse fails here rather than in a cluster.
"""

from __future__ import annotations

import copy
import math
import re
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from gati import config, names
from services.cache.config import CacheConfig
from services.inference.config import InferenceConfig
from services.trainer.config import TrainerConfig
from tests.deploy import k8s_checks as k8s
from tests.deploy import kustomize

OVERLAYS = k8s.overlays()
SERVICES = {
    "inference": (InferenceConfig, names.HEALTH_INFERENCE),
    "cache": (CacheConfig, names.HEALTH_CACHE),
    "trainer": (TrainerConfig, names.HEALTH_TRAINER),
}
# Settings each service cannot do without in a cluster (the rest keep their defaults).
REQUIRED_ENV = {
    "inference": {
        "GATI_MODEL",
        "GATI_ARCH",
        "GATI_WEIGHTS",
        "GATI_CACHE_ADDRESS",
        "GATI_KAFKA_BOOTSTRAP",
    },
    "cache": {"GATI_REDIS_URL", "GATI_REDIS_PASSWORD"},
    "trainer": {
        "GATI_KAFKA_BOOTSTRAP",
        "GATI_REDIS_URL",
        "GATI_REDIS_PASSWORD",
        "GATI_MODEL",
        "GATI_ARCH",
        "GATI_WEIGHTS",
    },
}
# The Secrets docs/deploy.md tells the operator to create (never in git), stand-in values.
SECRETS = k8s.SECRETS
DEFAULT_PORTS = {
    "inference": (names.INFERENCE_PORT, names.INFERENCE_METRICS_PORT),
    "cache": (names.CACHE_PORT, names.CACHE_METRICS_PORT),
    "trainer": (names.TRAINER_PORT, names.TRAINER_METRICS_PORT),
}
HTTP_PORT = InferenceConfig.http_port  # the REST binding's default, Triton's 8000
LABELS = ("app.kubernetes.io/name", "app.kubernetes.io/component", "app.kubernetes.io/part-of")
VERSION = tomllib.loads((k8s.REPO / "pyproject.toml").read_text())["project"]["version"]


def objs_of(overlay: Path) -> list[dict]:
    return kustomize.render(overlay)


def service_of(container: dict) -> str | None:
    """`gati-inference` images run `gati serve inference` (see deploy/docker/Dockerfile)."""
    name = k8s.split_image(container["image"])[0].rsplit("/", 1)[-1]
    return name.removeprefix("gati-") if name.removeprefix("gati-") in SERVICES else None


def gati_containers(objs: list[dict]):
    """(workload, pod spec, container, service name) for every gati service container."""
    for w in k8s.workloads(objs):
        spec = k8s.pod_template(w)["spec"]
        for c in k8s.containers(spec):
            service = service_of(c)
            if service:
                yield w, spec, c, service


def effective_config(container: dict, service: str, objs: list[dict], secrets=SECRETS):
    """The service's configuration from the container's environment, with the files of its
    mounted Secrets (TLS, signing keys) written from `secrets` where the paths point."""
    env = k8s.resolve_env(container, objs, secrets)
    env = k8s.mounted_env(container, k8s.pod_spec_of(objs, container), env, secrets)
    return config.load(SERVICES[service][0], environ=env)


# --- settings ------------------------------------------------------------------------------
@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_every_service_runs_with_its_settings(overlay: Path) -> None:
    check_settings(objs_of(overlay), overlay.name)


def check_settings(objs: list[dict], label: str) -> None:
    found = {s for _, _, _, s in gati_containers(objs)}
    assert found == set(SERVICES)
    for w, _, c, service in gati_containers(objs):
        where = f"{label} {k8s.describe(w)} {c['name']}"
        declared = {e["name"] for e in c.get("env", [])}
        gati_vars = {n for n in declared if n.startswith(names.ENV_PREFIX)}
        readable = config.env_names(SERVICES[service][0])
        assert gati_vars <= readable, f"{where}: not settings of {service}: {gati_vars - readable}"
        assert REQUIRED_ENV[service] <= gati_vars, f"{where}: missing {REQUIRED_ENV[service]}"
        assert "envFrom" not in c, f"{where}: name GATI_* variables one by one"
        for var in c.get("env", []):
            if "PASSWORD" in var["name"] or "SECRET" in var["name"]:
                assert "secretKeyRef" in var.get("valueFrom", {}), f"{where}: {var['name']}"
        effective_config(c, service, objs)  # builds and checks, as the service does at start


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_every_reference_resolves(overlay: Path) -> None:
    """ConfigMap keys exist, Secrets are the documented ones, $(VAR) refers to earlier vars."""
    objs = objs_of(overlay)
    for w in k8s.workloads(objs):
        for c in k8s.containers(k8s.pod_template(w)["spec"]):
            env = k8s.resolve_env(c, objs, SECRETS)
            defined = set()
            for source in c.get("envFrom", []):
                cm = k8s.find(objs, "ConfigMap", source["configMapRef"]["name"])
                defined |= set(cm["data"])
            for var in c.get("env", []):
                for ref in re.findall(r"\$\((\w+)\)", str(var.get("value", ""))):
                    assert ref in defined, f"{k8s.describe(w)}: $({ref}) before it is defined"
                defined.add(var["name"])
            # an optional reference to what is absent sets nothing, as in a cluster
            assert env.keys() >= defined - k8s.optional_env(c)


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_records_topic_is_the_one_the_job_creates(overlay: Path) -> None:
    objs = objs_of(overlay)
    topics = set()
    for _, _, c, service in gati_containers(objs):
        cfg = effective_config(c, service, objs)
        if hasattr(cfg, "records_topic"):
            topics.add(cfg.records_topic)
    job = k8s.find(objs, "Job", "gati-kafka-topics")
    job_env = k8s.resolve_env(k8s.pod_template(job)["spec"]["containers"][0], objs, SECRETS)
    assert topics == {job_env["TOPIC"]} == {names.ACTIVATIONS_TOPIC}


def _container(objs: list[dict], workload: str, name: str) -> dict:
    spec = k8s.pod_template(k8s.find(objs, "Deployment", workload))["spec"]
    return next(c for c in k8s.containers(spec) if c["name"] == name)


def test_a_setting_the_service_does_not_read_is_caught() -> None:
    objs = copy.deepcopy(objs_of(OVERLAYS[0]))
    _container(objs, "gati-cache", "cache")["env"].append({"name": "GATI_THREADS", "value": "1"})
    with pytest.raises(AssertionError, match="not settings of cache"):
        check_settings(objs, "broken")


def test_a_value_the_service_refuses_is_caught() -> None:
    objs = copy.deepcopy(objs_of(OVERLAYS[0]))
    k8s.find(objs, "ConfigMap", "gati-config")["data"]["arch"] = ""  # model without arch
    with pytest.raises(config.ConfigError, match="model"):
        check_settings(objs, "broken")


def test_a_wrong_health_service_name_is_caught() -> None:
    objs = copy.deepcopy(objs_of(OVERLAYS[0]))
    probe = _container(objs, "gati-trainer", "trainer")["readinessProbe"]
    probe["grpc"]["service"] = "gati.v1.TrainerService"
    with pytest.raises(AssertionError):
        check_ports_and_health(objs, "broken")


# --- ports, health, addresses --------------------------------------------------------------
@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_ports_and_health_checks(overlay: Path) -> None:
    check_ports_and_health(objs_of(overlay), overlay.name)


def check_ports_and_health(objs: list[dict], label: str) -> None:
    for w, _, c, service in gati_containers(objs):
        where = f"{label} {k8s.describe(w)} {c['name']}"
        cfg = effective_config(c, service, objs)
        health = SERVICES[service][1]
        ports = {p["containerPort"] for p in c.get("ports", [])}
        served = {cfg.port, cfg.metrics_port, getattr(cfg, "http_port", -1)} - {-1}
        assert ports == served, where
        targets = {}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert probe in c, f"{where}: no {probe}"
            kind, port, _ = targets[probe] = k8s.probe_target(c[probe])
            assert port == cfg.port, f"{where}: {probe} port"
            # The kubelet's grpc probe dials in plaintext: behind TLS only `gati health`,
            # which reads the container's GATI_TLS_* settings, can ask.
            if cfg.tls_cert is not None:
                assert kind == "exec", f"{where}: {probe} cannot reach a TLS port ({kind})"
            if kind == "exec":  # a Python start: give it time, and not too often
                assert c[probe].get("timeoutSeconds", 1) >= 5, f"{where}: {probe} timeout"
                assert c[probe].get("periodSeconds", 10) >= 5, f"{where}: {probe} period"
        assert targets["startupProbe"][2] == health, where
        assert targets["readinessProbe"][2] == health, where
        # Liveness asks for the overall status, which turns NOT_SERVING while the server
        # drains: its failure budget must outlast the drain.
        live = c["livenessProbe"]
        assert targets["livenessProbe"][2] == "", where
        budget = live.get("periodSeconds", 10) * live.get("failureThreshold", 3)
        assert budget > getattr(cfg, "drain_seconds", 0), f"{where}: liveness budget {budget}"
        # The manifests use the ports gati/names.py gives every other client.
        assert (cfg.port, cfg.metrics_port) == DEFAULT_PORTS[service], where


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_prometheus_annotations_name_the_metrics_port(overlay: Path) -> None:
    objs = objs_of(overlay)
    for w in k8s.workloads(objs):
        template = k8s.pod_template(w)
        mains = [
            (c, service_of(c)) for c in template["spec"]["containers"] if service_of(c) is not None
        ]
        annotations = template["metadata"].get("annotations", {})
        if not mains:
            continue
        [(c, service)] = mains
        cfg = effective_config(c, service, objs)
        assert annotations.get("prometheus.io/scrape") == "true"
        assert annotations.get("prometheus.io/port") == str(cfg.metrics_port)
        assert annotations.get("prometheus.io/path") == "/metrics"


def test_the_clients_port_is_tritons() -> None:
    """gRPC on 8001 and REST on 8000; where TLS is on, REST is off (it serves plain HTTP)."""
    for overlay in OVERLAYS:
        objs = objs_of(overlay)
        svc = k8s.find(objs, "Service", "gati-inference")
        (cfg,) = [
            effective_config(c, s, objs) for _, _, c, s in gati_containers(objs) if s == "inference"
        ]
        rest = [HTTP_PORT] if cfg.http_port >= 0 else []
        assert cfg.tls_cert is None or not rest, f"{overlay.name}: plaintext REST beside TLS"
        assert [p["port"] for p in svc["spec"]["ports"]] == [names.INFERENCE_PORT, *rest]


def _service_reaches(objs: list[dict], host: str, port: int, service: str) -> bool:
    """Whether Service `host`:`port` routes to the cache/kafka/redis/... pods it should."""
    svc = k8s.find(objs, "Service", host)
    if svc is None:
        return False
    for sp in svc["spec"]["ports"]:
        if sp["port"] != port:
            continue
        for w in k8s.workloads(objs):
            t = k8s.pod_template(w)
            if k8s.selector_matches(
                {"matchLabels": svc["spec"]["selector"]}, t["metadata"]["labels"]
            ):
                target = k8s.resolve_port(sp.get("targetPort", sp["port"]), t["spec"])
                runs = {service_of(c) or c["name"] for c in k8s.containers(t["spec"])}
                if service in runs and target is not None:
                    return True
    return False


def _host_port(address: str) -> tuple[str, int]:
    parts = urlsplit(address if "://" in address else f"//{address}")
    return parts.hostname, parts.port


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_addresses_lead_to_the_right_pods(overlay: Path) -> None:
    """GATI_CACHE_ADDRESS, GATI_KAFKA_BOOTSTRAP and GATI_REDIS_URL name real Services (or the
    sidecar on loopback) whose ports lead to containers of the right kind."""
    objs = objs_of(overlay)
    for w, spec, c, service in gati_containers(objs):
        cfg = effective_config(c, service, objs)
        where = f"{overlay.name} {k8s.describe(w)} {c['name']}"
        if getattr(cfg, "cache_address", None):
            host, port = _host_port(cfg.cache_address)
            if host in ("127.0.0.1", "localhost"):
                sidecars = [x for x in k8s.containers(spec) if service_of(x) == "cache"]
                assert sidecars, f"{where}: loopback cache address but no cache in the pod"
                assert effective_config(sidecars[0], "cache", objs).port == port
                assert k8s.is_sidecar(sidecars[0]), f"{where}: run the cache as a native sidecar"
            else:
                assert port == CacheConfig().port
                assert _service_reaches(objs, host, port, "cache"), f"{where}: {cfg.cache_address}"
        if getattr(cfg, "kafka_bootstrap", None):
            for server in cfg.kafka_bootstrap.split(","):
                host, port = _host_port(server)
                assert _service_reaches(objs, host, port, "kafka"), f"{where}: {server}"
        if getattr(cfg, "redis_url", None):
            host, port = _host_port(cfg.redis_url)
            assert _service_reaches(objs, host, port, "redis"), f"{where}: {cfg.redis_url}"


# --- lifecycle -----------------------------------------------------------------------------
def _drain(container: dict, service: str, objs: list[dict]) -> float:
    return getattr(effective_config(container, service, objs), "drain_seconds", 0.0)


def _pre_stop(container: dict) -> float:
    return container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_termination_grace_exceeds_the_drain(overlay: Path) -> None:
    """Main containers stop first (preStop, then drain); native sidecars stop after them."""
    objs = objs_of(overlay)
    for w in k8s.workloads(objs):
        spec = k8s.pod_template(w)["spec"]
        grace = spec.get("terminationGracePeriodSeconds", 30)
        main = max(
            (
                _pre_stop(c) + _drain(c, service_of(c), objs)
                for c in spec["containers"]
                if service_of(c)
            ),
            default=0,
        )
        sidecars = sum(
            _pre_stop(c) + _drain(c, service_of(c), objs)
            for c in spec.get("initContainers", [])
            if k8s.is_sidecar(c) and service_of(c)
        )
        assert grace > main + sidecars, f"{overlay.name} {k8s.describe(w)}: grace {grace}"


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_cache_admits_every_lookup_stream(overlay: Path) -> None:
    """Every inference pod holds one lookup stream; connections are balanced per connection,
    so all may land on one cache pod. Its stream cap (RESOURCE_EXHAUSTED beyond it) must admit
    them all; health and plan calls never wait on streams (the service is asyncio)."""
    objs = objs_of(overlay)
    hpa = k8s.find(objs, "HorizontalPodAutoscaler", "gati-inference")
    for w, _, c, service in gati_containers(objs):
        if service != "cache":
            continue
        streams = 1 if k8s.is_sidecar(c) else hpa["spec"]["maxReplicas"]
        cap = effective_config(c, service, objs).max_streams
        assert cap >= streams, f"{overlay.name} {k8s.describe(w)}: max_streams {cap}"


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_one_trainer(overlay: Path) -> None:
    trainer = k8s.find(objs_of(overlay), "Deployment", "gati-trainer")
    assert trainer["spec"]["replicas"] == 1
    assert trainer["spec"]["strategy"] == {"type": "Recreate"}


# --- security and resources ----------------------------------------------------------------
@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_pods_are_locked_down(overlay: Path) -> None:
    objs = objs_of(overlay)
    accounts = {sa["metadata"]["name"]: sa for sa in k8s.by_kind(objs, "ServiceAccount")}
    for w in k8s.workloads(objs):
        spec = k8s.pod_template(w)["spec"]
        where = f"{overlay.name} {k8s.describe(w)}"
        pod_sc = spec.get("securityContext", {})
        assert pod_sc.get("runAsNonRoot") is True, where
        assert pod_sc.get("runAsUser", 0) != 0, where
        assert pod_sc.get("seccompProfile") == {"type": "RuntimeDefault"}, where
        assert spec.get("automountServiceAccountToken") is False, where
        account = accounts.get(spec.get("serviceAccountName"))
        assert account is not None, f"{where}: ServiceAccount {spec.get('serviceAccountName')}"
        assert account.get("automountServiceAccountToken") is False
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in k8s.containers(spec):
            sc = c.get("securityContext", {})
            assert sc.get("allowPrivilegeEscalation") is False, f"{where} {c['name']}"
            assert sc.get("readOnlyRootFilesystem") is True, f"{where} {c['name']}"
            assert sc.get("capabilities") == {"drop": ["ALL"]}, f"{where} {c['name']}"
            assert "privileged" not in sc
            resources = c.get("resources", {})
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(kind, {})), f"{where} {c['name']}"
            tmp = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
            assert len(tmp) == 1 and "emptyDir" in volumes[tmp[0]["name"]], f"{where} {c['name']}"


def _cpu(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_torch_threads_fit_the_cpu_limit(overlay: Path) -> None:
    """torch sizes its pool by the node's cores unless told: every gati container says."""
    objs = objs_of(overlay)
    for w, _, c, _ in gati_containers(objs):
        env = k8s.resolve_env(c, objs, SECRETS)
        threads = int(env.get("GATI_THREADS") or env.get("OMP_NUM_THREADS") or 0)
        limit = _cpu(c["resources"]["limits"]["cpu"])
        assert 1 <= threads <= math.ceil(limit), f"{overlay.name} {k8s.describe(w)} {c['name']}"


@pytest.mark.parametrize("overlay", ("prod", "sidecar", "tls"))
def test_inference_requests_a_core_beyond_its_torch_threads(overlay: str) -> None:
    """Outside dev, the model's threads get whole cores and the lookup relay and gRPC threads
    one more, so none of them preempts the model (docs/serving.md, "Threads and cores")."""
    objs = objs_of(k8s.K8S / "overlays" / overlay)
    for w, _, c, service in gati_containers(objs):
        if service != "inference":
            continue
        threads = int(k8s.resolve_env(c, objs, SECRETS).get("GATI_THREADS") or 0)
        request = _cpu(c["resources"]["requests"]["cpu"])
        assert threads == 1 and request >= threads + 1, f"{overlay} {k8s.describe(w)}"


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_no_secret_values_are_committed(overlay: Path) -> None:
    objs = objs_of(overlay)
    assert k8s.by_kind(objs, "Secret") == []
    for w in k8s.workloads(objs):
        for c in k8s.containers(k8s.pod_template(w)["spec"]):
            for var in c.get("env", []):
                if re.search("PASSWORD|SECRET|TOKEN|REDISCLI_AUTH", var["name"]):
                    assert "value" not in var, f"{k8s.describe(w)}: {var['name']}"


# --- labels, selectors, scaling ------------------------------------------------------------
@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_labels_and_selectors(overlay: Path) -> None:
    objs = objs_of(overlay)
    for obj in objs:
        labels = obj["metadata"].get("labels", {})
        assert all(k in labels for k in LABELS), f"{k8s.describe(obj)}: labels {labels}"
        assert labels["app.kubernetes.io/part-of"] == "gati"
    templates = {k8s.describe(w): k8s.pod_template(w) for w in k8s.workloads(objs)}
    for w in k8s.workloads(objs):
        selector = w["spec"].get("selector")
        if w["kind"] == "Job":
            continue
        matched = [
            name
            for name, t in templates.items()
            if k8s.selector_matches(selector, t["metadata"]["labels"])
        ]
        assert matched == [k8s.describe(w)], f"{k8s.describe(w)} selects {matched}"
        assert all(k in templates[k8s.describe(w)]["metadata"]["labels"] for k in LABELS)


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_autoscaling_and_budgets(overlay: Path) -> None:
    objs = objs_of(overlay)
    for hpa in k8s.by_kind(objs, "HorizontalPodAutoscaler"):
        ref = hpa["spec"]["scaleTargetRef"]
        target = k8s.find(objs, ref["kind"], ref["name"])
        assert target is not None
        assert "replicas" not in target["spec"], "the autoscaler owns the replica count"
        assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    templates = [k8s.pod_template(w)["metadata"]["labels"] for w in k8s.workloads(objs)]
    for pdb in k8s.by_kind(objs, "PodDisruptionBudget"):
        selected = [t for t in templates if k8s.selector_matches(pdb["spec"]["selector"], t)]
        assert len(selected) == 1, f"{k8s.describe(pdb)} selects {len(selected)} workloads"
    if overlay.name in ("prod", "sidecar", "tls"):
        budgets = {p["metadata"]["name"] for p in k8s.by_kind(objs, "PodDisruptionBudget")}
        expected = {"gati-inference", "gati-kafka"} | (
            {"gati-cache"} if overlay.name != "sidecar" else set()
        )
        assert budgets == expected
    if overlay.name == "dev":
        assert k8s.by_kind(objs, "PodDisruptionBudget") == []
        for w in k8s.workloads(objs):
            assert w["spec"].get("replicas", 1) == 1
        hpa = k8s.find(objs, "HorizontalPodAutoscaler", "gati-inference")
        assert hpa["spec"]["minReplicas"] == hpa["spec"]["maxReplicas"] == 1


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_kafka_quorum_and_replication_fit_the_brokers(overlay: Path) -> None:
    objs = objs_of(overlay)
    kafka = k8s.find(objs, "StatefulSet", "gati-kafka")
    brokers = kafka["spec"]["replicas"]
    conf = k8s.find(objs, "ConfigMap", "gati-kafka-config")["data"]
    topics = k8s.find(objs, "ConfigMap", "gati-kafka-topics")["data"]
    voters = conf["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")
    assert voters == [
        f"{i}@gati-kafka-{i}.{kafka['spec']['serviceName']}:9093" for i in range(brokers)
    ]
    for key in (
        "KAFKA_DEFAULT_REPLICATION_FACTOR",
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
    ):
        assert int(conf[key]) == brokers, key
    assert int(topics["replication-factor"]) == brokers
    assert int(conf["KAFKA_MIN_INSYNC_REPLICAS"]) == max(1, brokers - 1)
    assert int(conf["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"]) == max(1, brokers - 1)
    headless = k8s.find(objs, "Service", kafka["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True


# --- images ----------------------------------------------------------------------------------
@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_images_are_pinned(overlay: Path) -> None:
    """gati images carry the project's version (or a digest), all from one registry; other
    images have an exact version, never `latest`."""
    objs = objs_of(overlay)
    prefixes = set()
    for w in k8s.workloads(objs):
        for c in k8s.containers(k8s.pod_template(w)["spec"]):
            name, tag, digest = k8s.split_image(c["image"])
            if service_of(c):
                assert digest or tag == VERSION, c["image"]
                prefixes.add(name.rsplit("/", 1)[0] if "/" in name else "")
            else:
                assert digest or (tag and tag != "latest" and re.search(r"\d+\.\d+", tag))
    assert len(prefixes) == 1, f"{overlay.name}: gati images from {prefixes}"


# --- network paths ---------------------------------------------------------------------------
KAFKA, CONTROLLER, REDIS = 9092, 9093, 6379
BASE_PATHS = {
    # clients (anywhere, the cluster included) -> inference
    ("world", "gati-inference", names.INFERENCE_PORT),
    ("prometheus", "gati-inference", names.INFERENCE_PORT),
    ("world", "gati-inference", HTTP_PORT),  # the REST binding
    ("prometheus", "gati-inference", HTTP_PORT),
    # Prometheus -> every metrics port
    ("prometheus", "gati-inference", names.INFERENCE_METRICS_PORT),
    ("prometheus", "gati-cache", names.CACHE_METRICS_PORT),
    ("prometheus", "gati-trainer", names.TRAINER_METRICS_PORT),
    # the architecture: inference -> cache and Kafka, trainer -> Kafka and Redis, cache -> Redis
    ("gati-inference", "gati-cache", names.CACHE_PORT),
    ("gati-inference", "gati-kafka", KAFKA),
    ("gati-trainer", "gati-kafka", KAFKA),
    ("gati-trainer", "gati-redis", REDIS),
    ("gati-cache", "gati-redis", REDIS),
    # Kafka's own: the topic Job, brokers and controllers among themselves
    ("gati-kafka-topics", "gati-kafka", KAFKA),
    ("gati-kafka", "gati-kafka", KAFKA),
    ("gati-kafka", "gati-kafka", CONTROLLER),
}
SIDECAR_PATHS = (
    BASE_PATHS
    - {
        ("gati-inference", "gati-cache", names.CACHE_PORT),
        ("prometheus", "gati-cache", names.CACHE_METRICS_PORT),
        ("gati-cache", "gati-redis", REDIS),
    }
) | {
    ("gati-inference", "gati-redis", REDIS),  # the cache sidecar reads bundles
    ("prometheus", "gati-inference", names.CACHE_METRICS_PORT),
}
# components/tls turns REST off (it serves plain HTTP): nothing reaches 8000.
TLS_PATHS = {path for path in BASE_PATHS if path[2] != HTTP_PORT}
EXPECTED_PATHS = {
    "dev": BASE_PATHS, "prod": BASE_PATHS, "sidecar": SIDECAR_PATHS, "tls": TLS_PATHS
}  # fmt: skip


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_network_policies_allow_exactly_the_architecture(overlay: Path) -> None:
    objs = objs_of(overlay)
    assert k8s.allowed_paths(objs) == EXPECTED_PATHS[overlay.name]
    for pod in k8s.pod_endpoints(objs):
        assert k8s.dns_allowed(objs, pod), pod.name
        assert not k8s.allows(objs, pod, k8s.WORLD, 443), f"{pod.name} may reach the internet"


def test_the_policy_evaluator_notices_a_missing_path() -> None:
    """Guard the guard: drop the trainer's egress to Redis and the path disappears."""
    objs = copy.deepcopy(objs_of(OVERLAYS[0]))
    policy = k8s.find(objs, "NetworkPolicy", "gati-trainer")
    policy["spec"]["egress"] = [
        r for r in policy["spec"]["egress"] if r["ports"][0]["port"] != "redis"
    ]
    assert BASE_PATHS - k8s.allowed_paths(objs) == {("gati-trainer", "gati-redis", REDIS)}
