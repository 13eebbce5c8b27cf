"""Check what gati's kustomize overlays render to, with no cluster.

Rendering is `tests.deploy.kustomize` (the real tool); the lint that needs no tool is
`tests.deploy.kustomization_lint`. Here:
- `validate`: every object against the Kubernetes 1.30 OpenAPI schemas, strictly (unknown
  fields fail). kubernetes-validate only *warns* when it has no schema for a kind, which is
  what a wrong apiVersion looks like; here that is an error unless the group is a custom
  resource group the caller names.
- helpers the contract tests share: pod templates, label selectors, env resolution, and a
  small NetworkPolicy evaluator that lists which connections the policies allow.

Also a command, for CI or for checking your own overlay:
    python -m tests.deploy.k8s_checks deploy/k8s/overlays/prod [more overlays]
    python -m tests.deploy.k8s_checks --kserve my/overlay   # one that includes components/kserve
cert-manager's objects (components/cert-manager) get the structural checks of
`tests.deploy.cert_manager_checks` wherever they appear.
"""

from __future__ import annotations

import argparse
import atexit
import functools
import hashlib
import json
import shutil
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes_validate
import kubernetes_validate.utils

from tests.deploy import kustomize

Obj = dict[str, Any]

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
KUBERNETES_VERSION = "1.30.0"

# kubernetes-validate re-reads and re-parses its 1.2 MB definitions file for every object
# (20 ms each); the function is pure (file -> parsed JSON), so remember its answers.
if not hasattr(kubernetes_validate.utils.schema_contents, "cache_info"):
    kubernetes_validate.utils.schema_contents = functools.lru_cache(maxsize=64)(
        kubernetes_validate.utils.schema_contents
    )
POD_TEMPLATE_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job")
# The custom resources a validated overlay may hold (no schema offline: they get structural
# checks by hand instead): overlays/tls has cert-manager's (tests/deploy/cert_manager_checks).
CERT_MANAGER_GROUP = "cert-manager.io"
OVERLAY_CUSTOM_GROUPS: dict[str, frozenset[str]] = {"tls": frozenset({CERT_MANAGER_GROUP})}


def private_copy(directory: Path) -> Path:
    """A copy of deploy/k8s under `directory`, for a test to break."""
    copy = directory / "k8s"
    shutil.copytree(K8S, copy)
    return copy


def edit(path: Path, old: str, new: str) -> None:
    """Replace the first `old` in `path` with `new`; `old` must be there."""
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def overlays() -> list[Path]:
    return sorted(p for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").is_file())


# --- images --------------------------------------------------------------------------------
def split_image(image: str) -> tuple[str, str | None, str | None]:
    """`registry/name:tag@digest` -> (registry/name, tag, digest)."""
    rest, _, digest = image.partition("@")
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        return rest[:colon], rest[colon + 1 :], digest or None
    return rest, None, digest or None


# --- schema validation ---------------------------------------------------------------------
def group_of(obj: Obj) -> str:
    api = obj.get("apiVersion", "")
    return api.split("/")[0] if "/" in api else ""


def describe(obj: Obj) -> str:
    return f"{obj.get('kind')}/{(obj.get('metadata') or {}).get('name')}"


def validate(
    objs: Iterable[Obj], version: str = KUBERNETES_VERSION, custom_groups: Iterable[str] = ()
) -> list[str]:
    """One message per problem; empty when every object validates strictly."""
    custom = set(custom_groups)
    errors = []
    for obj in objs:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            errors.append(f"{describe(obj)}: {where}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError:
            if group_of(obj) not in custom:
                errors.append(
                    f"{describe(obj)}: no schema for apiVersion {obj.get('apiVersion')} kind "
                    f"{obj.get('kind')} in Kubernetes {version} (wrong apiVersion or kind?)"
                )
        except (KeyError, TypeError) as exc:
            errors.append(f"{describe(obj)}: not a valid object ({exc!r})")
    return errors


# --- objects and pods ----------------------------------------------------------------------
def by_kind(objs: Iterable[Obj], kind: str) -> list[Obj]:
    return [o for o in objs if o.get("kind") == kind]


def find(objs: Iterable[Obj], kind: str, name: str) -> Obj | None:
    return next((o for o in by_kind(objs, kind) if o["metadata"]["name"] == name), None)


def pod_template(workload: Obj) -> Obj:
    return workload["spec"]["template"]


def workloads(objs: Iterable[Obj]) -> list[Obj]:
    return [o for o in objs if o.get("kind") in POD_TEMPLATE_KINDS]


def containers(pod_spec: Obj) -> list[Obj]:
    """Every container that runs: init containers (sidecars included) and main ones."""
    return list(pod_spec.get("initContainers", [])) + list(pod_spec.get("containers", []))


def is_sidecar(container: Obj) -> bool:
    """A native sidecar: an init container that keeps running (restartPolicy Always)."""
    return container.get("restartPolicy") == "Always"


def selector_matches(selector: Obj | None, labels: Obj) -> bool:
    """A LabelSelector (matchLabels and matchExpressions) against a label map."""
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def container_ports(pod_spec: Obj) -> list[Obj]:
    return [p for c in containers(pod_spec) for p in c.get("ports", [])]


def resolve_port(port: int | str, pod_spec: Obj) -> int | None:
    """A Service targetPort or NetworkPolicy port (number or name) on this pod."""
    if isinstance(port, int):
        return port
    for p in container_ports(pod_spec):
        if p.get("name") == port:
            return p["containerPort"]
    return None


def resolve_env(container: Obj, objs: list[Obj], secrets: dict[str, dict[str, str]]) -> dict:
    """The container's environment as the kubelet would build it (envFrom, then env).

    ConfigMaps come from the rendered objects; Secrets, never committed, from `secrets`.
    A reference marked `optional: true` whose ConfigMap, Secret or key is absent sets nothing,
    as in a cluster. Raises KeyError naming a required reference that does not resolve.
    """
    env: dict[str, str] = {}

    def config_map(name: str) -> dict[str, str]:
        cm = find(objs, "ConfigMap", name)
        if cm is None:
            raise KeyError(f"ConfigMap {name} is not in the rendered objects")
        return cm.get("data", {})

    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(config_map(source["configMapRef"]["name"]))
        else:
            raise KeyError(f"unsupported envFrom source {source}")
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = str(var["value"])
            continue
        ref = var.get("valueFrom", {})
        if "configMapKeyRef" in ref:
            r = ref["configMapKeyRef"]
            cm = find(objs, "ConfigMap", r["name"])
            data = (cm or {}).get("data", {})
            if r["key"] not in data:
                if r.get("optional"):
                    continue
                config_map(r["name"])  # names a missing ConfigMap
                raise KeyError(f"{var['name']}: ConfigMap {r['name']} has no key {r['key']}")
            env[var["name"]] = str(data[r["key"]])
        elif "secretKeyRef" in ref:
            r = ref["secretKeyRef"]
            if r["key"] not in secrets.get(r["name"], {}):
                if r.get("optional"):
                    continue
                raise KeyError(f"{var['name']}: Secret {r['name']}/{r['key']} is not documented")
            env[var["name"]] = secrets[r["name"]][r["key"]]
        elif "fieldRef" in ref or "resourceFieldRef" in ref:
            env[var["name"]] = f"<{var['name']} from the downward API>"
        else:
            raise KeyError(f"{var['name']}: unsupported valueFrom {ref}")
    return env


def optional_env(container: Obj) -> set[str]:
    """Names of the container's variables read through an optional reference."""
    return {
        var["name"]
        for var in container.get("env", [])
        for ref in var.get("valueFrom", {}).values()
        if isinstance(ref, dict) and ref.get("optional")
    }


# --- Secrets and the files they become ------------------------------------------------------
# The Secrets docs/deploy.md has the operator create (never in git), with stand-in values. The
# optional ones (gati-kafka; gati-redis's username) are left out: the base runs without them.
# The TLS Secrets (components/tls) hold the cert-manager layout; read_pem only looks for a
# PEM header, so a stand-in header is enough for the services' start-up checks.
TLS_KEYS = ("tls.crt", "tls.key", "ca.crt")
TLS_SECRETS = ("gati-inference-tls", "gati-cache-tls", "gati-trainer-tls")
STAND_IN_PEM = "-----BEGIN STAND-IN-----\nnot a real key or certificate\n-----END STAND-IN-----\n"
SECRETS: dict[str, dict[str, str]] = {
    "gati-redis": {"password": "not-a-real-password"},
    "gati-signing": {"stand-in-1": "not-a-real-key-0123456789abcdef"},
    **{name: dict.fromkeys(TLS_KEYS, STAND_IN_PEM) for name in TLS_SECRETS},
}
_SCRATCH: list[Path] = []


def _scratch() -> Path:
    """One temporary directory per process for the files of mounted Secrets."""
    if not _SCRATCH:
        root = Path(tempfile.mkdtemp(prefix="gati-deploy-mounts-"))
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        _SCRATCH.append(root)
    return _SCRATCH[0]


def secret_mounts(container: Obj, pod_spec: Obj) -> list[tuple[Obj, Obj]]:
    """(volumeMount, its Secret volume source) for every Secret the container mounts."""
    volumes = {v["name"]: v for v in pod_spec.get("volumes", [])}
    found = []
    for mount in container.get("volumeMounts", []):
        volume = volumes.get(mount["name"], {})
        if "secret" in volume:
            found.append((mount, volume["secret"]))
    return found


def secret_file(container: Obj, pod_spec: Obj, path: str) -> tuple[Obj, Obj, str] | None:
    """(volumeMount, Secret source, file name) when `path` is inside a Secret volume the
    container mounts (the file name "" for the mount's directory itself), else None."""
    for mount, source in sorted(
        secret_mounts(container, pod_spec), key=lambda m: -len(m[0]["mountPath"])
    ):
        root = mount["mountPath"].rstrip("/")
        if path == root:
            return mount, source, ""
        if path.startswith(root + "/"):
            return mount, source, path[len(root) + 1 :]
    return None


def secret_files(source: Obj, secrets: dict[str, dict[str, str]]) -> dict[str, str]:
    """The files the kubelet writes for a Secret volume: one per key, or per `items` entry.
    An optional Secret that `secrets` does not hold is an empty directory; a required one is
    a KeyError (the pod would not start)."""
    name = source["secretName"]
    if name not in secrets:
        if source.get("optional"):
            return {}
        raise KeyError(f"Secret volume {name} is not documented")
    data = secrets[name]
    if not source.get("items"):
        return dict(data)
    return {item["path"]: data[item["key"]] for item in source["items"] if item["key"] in data}


def mounted_env(
    container: Obj, pod_spec: Obj, env: dict[str, str], secrets: dict[str, dict[str, str]]
) -> dict[str, str]:
    """`env` with every value that is a path inside a Secret volume of the container pointing
    instead at a copy of that volume on this machine, its files written from `secrets` as the
    kubelet would write them. The services' start-up checks read those files (PEM headers,
    signing keys), so a configuration can be built offline from a rendered pod."""
    out = dict(env)
    for key, value in env.items():
        found = secret_file(container, pod_spec, value)
        if found is None:
            continue
        _, source, rest = found
        files = secret_files(source, secrets)
        digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]
        copy_dir = _scratch() / f"{source['secretName']}-{digest}"
        if not copy_dir.is_dir():
            copy_dir.mkdir()
            for file, content in files.items():
                (copy_dir / file).write_text(content)
        out[key] = str(copy_dir / rest) if rest else str(copy_dir)
    return out


def pod_spec_of(objs: Iterable[Obj], container: Obj) -> Obj:
    """The pod spec (of a workload in `objs`) that holds this very container object."""
    for w in workloads(objs):
        spec = pod_template(w)["spec"]
        if any(c is container for c in containers(spec)):
            return spec
    raise KeyError(f"container {container.get('name')} is in no workload of the objects")


# --- probes -------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """An argument parser that raises ValueError instead of printing usage and exiting."""

    def error(self, message: str):  # type: ignore[override]
        raise ValueError(message)


def probe_target(probe: Obj) -> tuple[str, int, str]:
    """(kind, port, health service) a probe asks: a kubelet `grpc` probe, or an `exec` probe
    running `gati health 127.0.0.1:PORT --service NAME` (cli/health.py's own argument parser
    reads the command, so a flag it does not know fails here). ValueError for anything else."""
    if "grpc" in probe:
        return "grpc", probe["grpc"]["port"], probe["grpc"].get("service", "")
    command = probe.get("exec", {}).get("command", [])
    if command[:2] != ["gati", "health"]:
        raise ValueError(f"not a grpc probe nor `gati health`: {probe}")
    from cli import health  # the command the image runs: `gati health`

    parser = _Parser(prog="gati health")
    health.add_arguments(parser)
    try:
        args = parser.parse_args(command[2:])
    except ValueError as exc:
        raise ValueError(f"`{' '.join(command)}`: {exc}") from None
    host, _, port = args.address.rpartition(":")
    if host != "127.0.0.1":
        raise ValueError(f"`{' '.join(command)}`: probe the pod's own loopback, not {host}")
    return "exec", int(port), args.service


# --- NetworkPolicy evaluation --------------------------------------------------------------
@dataclass(frozen=True)
class Endpoint:
    """A pod of some namespace (ours: namespace None), or `world` (outside the cluster)."""

    name: str
    labels: tuple[tuple[str, str], ...] = ()
    namespace: str | None = None
    pod_spec: Obj | None = field(default=None, compare=False, hash=False)

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)


WORLD = Endpoint("world")
PROMETHEUS = Endpoint(
    "prometheus", (("app.kubernetes.io/name", "prometheus"),), namespace="monitoring"
)
KUBE_DNS = Endpoint("kube-dns", (("k8s-app", "kube-dns"),), namespace="kube-system")


def pod_endpoints(objs: list[Obj]) -> list[Endpoint]:
    """One endpoint per workload of the overlay, named by app.kubernetes.io/name."""
    found = []
    for w in workloads(objs):
        labels = pod_template(w)["metadata"]["labels"]
        found.append(
            Endpoint(
                labels["app.kubernetes.io/name"],
                tuple(sorted(labels.items())),
                pod_spec=pod_template(w)["spec"],
            )
        )
    return found


def _peer_matches(peer: Obj, other: Endpoint) -> bool:
    if "ipBlock" in peer:
        return other is WORLD and peer["ipBlock"].get("cidr") == "0.0.0.0/0"
    if other is WORLD:
        return False
    ns_sel = peer.get("namespaceSelector")
    if ns_sel is None:
        in_namespace = other.namespace is None
    elif other.namespace is None:
        # Our own namespace's labels are unknown here; only `{}` surely selects it.
        in_namespace = ns_sel == {}
    else:
        ns_labels = {"kubernetes.io/metadata.name": other.namespace}
        in_namespace = selector_matches(ns_sel, ns_labels)
    pod_sel = peer.get("podSelector")
    return in_namespace and (pod_sel is None or selector_matches(pod_sel, other.label_map))


def _port_matches(rule_ports: list[Obj] | None, port: int, protocol: str, dest: Endpoint) -> bool:
    if not rule_ports:
        return True
    for p in rule_ports:
        if p.get("protocol", "TCP") != protocol:
            continue
        if "port" not in p:
            return True
        number = p["port"]
        if isinstance(number, str):
            number = resolve_port(number, dest.pod_spec) if dest.pod_spec else None
        if number == port or (number is not None and number <= port <= p.get("endPort", number)):
            return True
    return False


def _policies_for(objs: list[Obj], pod: Endpoint, direction: str) -> list[Obj]:
    if pod.namespace is not None or pod is WORLD:
        return []
    return [
        np
        for np in by_kind(objs, "NetworkPolicy")
        if selector_matches(np["spec"]["podSelector"], pod.label_map)
        and direction in np["spec"].get("policyTypes", ["Ingress"])
    ]


def allows(objs: list[Obj], src: Endpoint, dst: Endpoint, port: int, protocol: str = "TCP"):
    """Whether the NetworkPolicies let `src` open a connection to `dst` on `port`.

    Only our namespace's policies are known: traffic leaving or entering another namespace's
    pods is judged on our side alone.
    """
    egress = _policies_for(objs, src, "Egress")
    if egress and not any(
        _port_matches(rule.get("ports"), port, protocol, dst)
        and (not rule.get("to") or any(_peer_matches(p, dst) for p in rule["to"]))
        for np in egress
        for rule in np["spec"].get("egress", [])
    ):
        return False
    ingress = _policies_for(objs, dst, "Ingress")
    return not ingress or any(
        _port_matches(rule.get("ports"), port, protocol, dst)
        and (not rule.get("from") or any(_peer_matches(p, src) for p in rule["from"]))
        for np in ingress
        for rule in np["spec"].get("ingress", [])
    )


def allowed_paths(objs: list[Obj]) -> set[tuple[str, str, int]]:
    """(source, destination, port) for every allowed TCP connection to a declared port.

    Sources: every workload's pods, `world` (outside the cluster) and `prometheus` (a pod in
    the monitoring namespace). Destinations: every declared container port of every
    workload. DNS, which every pod needs, is checked separately (`dns_allowed`).
    """
    pods = pod_endpoints(objs)
    paths = set()
    for dst in pods:
        ports = {p["containerPort"] for p in container_ports(dst.pod_spec)}
        for src in [*pods, WORLD, PROMETHEUS]:
            for port in sorted(ports):
                if allows(objs, src, dst, port):
                    paths.add((src.name, dst.name, port))
    return paths


def dns_allowed(objs: list[Obj], pod: Endpoint) -> bool:
    return allows(objs, pod, KUBE_DNS, 53, "UDP") and allows(objs, pod, KUBE_DNS, 53, "TCP")


def main(argv: list[str]) -> int:
    """Validate each overlay given (default: every overlay). With `--kserve`, KServe's custom
    resources (components/kserve) get the structural checks of `kserve_checks` instead."""
    from tests.deploy import cert_manager_checks, kserve_checks

    kserve = "--kserve" in argv
    argv = [a for a in argv if a != "--kserve"]
    status = 0
    for arg in argv or [str(p) for p in overlays()]:
        objs = kustomize.render(Path(arg))
        groups = {cert_manager_checks.GROUP} if cert_manager_checks.objects(objs) else set()
        errors = cert_manager_checks.structure(objs)
        if kserve:
            errors += validate(objs, custom_groups=groups | {kserve_checks.GROUP})
            errors += kserve_checks.structure(objs) + kserve_checks.network(objs)
        else:
            errors += validate(objs, custom_groups=groups)
        print(f"{arg}: {'ok' if not errors else f'{len(errors)} error(s)'}")
        for e in errors:
            print(f"  {e}")
        status |= bool(errors)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
