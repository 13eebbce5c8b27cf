"""Trust in the manifests: keys and certificates as Secrets mounted read-only, credentials only
through secretKeyRef, signing keys in every service, and in overlays/tls, TLS on every gati
gRPC port (mutual inside the mesh), probes that can speak it, and certificates for the names
that are dialled.

Every overlay is rendered with the real kustomize and read as the kubelet and the services
would read it: a container's environment is resolved through the ConfigMaps and the
documented Secrets (stand-ins, k8s.SECRETS), the files of its mounted Secrets are written to
a scratch directory, and the service's own config class is built from the result. Each check
returns its problems, so broken copies of the tree can show that it notices them.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from gati import config, names
from services.cache.config import CacheConfig
from services.inference.config import InferenceConfig
from services.trainer.config import TrainerConfig
from tests.deploy import cert_manager_checks as cm
from tests.deploy import k8s_checks as k8s
from tests.deploy import kustomize
from tests.deploy.test_k8s_contracts import effective_config, gati_containers

OVERLAYS = k8s.overlays()
TLS_OVERLAY = "tls"
NAMESPACE = "gati"  # the namespace docs/deploy.md installs into; the Certificates name it
CONFIGS = {"inference": InferenceConfig, "cache": CacheConfig, "trainer": TrainerConfig}
HEALTH = {
    "inference": names.HEALTH_INFERENCE,
    "cache": names.HEALTH_CACHE,
    "trainer": names.HEALTH_TRAINER,
}
# Inside the mesh a service admits only clients with a certificate of the CA; the inference
# service is the endpoint for clients outside it (server TLS only).
CLIENT_AUTH = {"inference": False, "cache": True, "trainer": True}
# Settings that name a file or directory holding key material: each must lie in a Secret.
KEY_MATERIAL = (
    "tls_cert", "tls_key", "tls_ca", "kafka_ssl_ca", "kafka_ssl_cert", "kafka_ssl_key",
    "redis_tls_ca", "signing_keys",
)  # fmt: skip
# Which file of the cert-manager Secret layout each TLS setting reads.
TLS_FILES = {"tls_cert": "tls.crt", "tls_key": "tls.key", "tls_ca": "ca.crt"}
CREDENTIAL_NAME = re.compile(r"PASSWORD|PASSPHRASE|SECRET|TOKEN|REDISCLI_AUTH", re.I)
CREDENTIAL_KEY = re.compile(r"pass(word|wd|phrase)?$|secret$|token$|api-?key$", re.I)
CREDENTIAL_TEXT = re.compile(
    r"(password|passwd|secret)\s*[=:]\s*[\"']?(?![\"']?\$)[^\s\"'$]+", re.I
)


def objs_of(overlay: Path | str) -> list[dict]:
    return kustomize.render(k8s.K8S / "overlays" / overlay if isinstance(overlay, str) else overlay)


def raw_env(container: dict, objs: list[dict], secrets=k8s.SECRETS) -> dict[str, str]:
    """The environment as the kubelet builds it (paths as the pod sees them)."""
    return k8s.resolve_env(container, objs, secrets)


def _strings(obj, path=""):
    """(path, string) for every string value in a rendered object."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield from _strings(value, f"{path}.{key}" if path else str(key))
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            yield from _strings(value, f"{path}.{i}")
    elif isinstance(obj, str):
        yield path, obj


def _mappings(obj):
    if isinstance(obj, dict):
        yield obj
        for value in obj.values():
            yield from _mappings(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from _mappings(value)


# --- the checks ----------------------------------------------------------------------------
def secret_mount_problems(objs: list[dict]) -> list[str]:
    """Every Secret volume: required, mounted read-only by whole directory (a subPath mount
    never sees a rotated Secret), its files readable by no one outside the pod's user and
    group."""
    problems = []
    for w in k8s.workloads(objs):
        spec = k8s.pod_template(w)["spec"]
        for volume in spec.get("volumes", []):
            source = volume.get("secret")
            if source is None:
                continue
            where = f"{k8s.describe(w)} volume {volume['name']}"
            if source.get("optional"):
                problems.append(f"{where}: optional (a pod would start without its keys)")
            modes = [source.get("defaultMode", 0o644)]
            modes += [i["mode"] for i in source.get("items", []) if "mode" in i]
            if any(mode & 0o007 for mode in modes):
                problems.append(
                    f"{where}: files readable by others (modes {[oct(m) for m in modes]})"
                )
        for c in k8s.containers(spec):
            for mount, _ in k8s.secret_mounts(c, spec):
                where = f"{k8s.describe(w)} {c['name']} mount {mount['name']}"
                if mount.get("readOnly") is not True:
                    problems.append(f"{where}: not readOnly")
                if "subPath" in mount or "subPathExpr" in mount:
                    problems.append(f"{where}: subPath (never updated when the Secret rotates)")
    return problems


def credential_problems(objs: list[dict]) -> list[str]:
    """Passwords only through secretKeyRef: every secret setting of a gati service and every
    credential-named variable of any container; no Secret objects in git; no credential in
    a ConfigMap, a URL or any other string of the render."""
    problems = [
        f"{k8s.describe(s)}: a Secret in the manifests" for s in k8s.by_kind(objs, "Secret")
    ]
    secret_settings = {
        service: {config.env_name(f.name) for f in dataclasses.fields(cls) if config.is_secret(f)}
        for service, cls in CONFIGS.items()
    }
    services = {id(c): s for _, _, c, s in gati_containers(objs)}
    for w in k8s.workloads(objs):
        for c in k8s.containers(k8s.pod_template(w)["spec"]):
            wanted = secret_settings.get(services.get(id(c)), set())
            for var in c.get("env", []):
                credential = var["name"] in wanted or CREDENTIAL_NAME.search(var["name"])
                if credential and "secretKeyRef" not in var.get("valueFrom", {}):
                    problems.append(
                        f"{k8s.describe(w)} {c['name']}: {var['name']} not from a Secret"
                    )
    for cm_ in k8s.by_kind(objs, "ConfigMap"):
        for key in cm_.get("data", {}):
            if CREDENTIAL_KEY.search(key.replace("_", "-")):
                problems.append(f"{k8s.describe(cm_)}: key {key} looks like a credential")
    for obj in objs:
        for mapping in _mappings(obj):
            for key, value in mapping.items():
                if isinstance(value, str) and value and CREDENTIAL_KEY.search(key):
                    problems.append(f"{k8s.describe(obj)}: {key}: a literal credential")
        for path, text in _strings(obj):
            for word in re.findall(r"\b[a-z][a-z0-9+.-]*://[^\s/'\"]+@", text):
                if urlsplit(word + "x").password:
                    problems.append(f"{k8s.describe(obj)} {path}: a password in a URL")
            if CREDENTIAL_TEXT.search(text):
                problems.append(f"{k8s.describe(obj)} {path}: {CREDENTIAL_TEXT.search(text)[0]!r}")
    return problems


def key_material_problems(objs: list[dict]) -> list[str]:
    """Every setting that names key material (TLS files, Kafka and Redis CAs, the signing key
    directory) points inside a Secret volume the container mounts; the TLS ones at the
    cert-manager layout's files of one Secret; the signing keys at the Secret gati-signing."""
    problems = []
    for w, spec, c, service in gati_containers(objs):
        where = f"{k8s.describe(w)} {c['name']}"
        env = raw_env(c, objs)
        tls_secrets = set()
        for field in KEY_MATERIAL:
            path = env.get(config.env_name(field))
            if path is None:
                continue
            found = k8s.secret_file(c, spec, path)
            if found is None:
                problems.append(f"{where}: {config.env_name(field)}={path} is in no mounted Secret")
                continue
            _, source, file = found
            if field in TLS_FILES:
                tls_secrets.add(source["secretName"])
                if file != TLS_FILES[field]:
                    problems.append(
                        f"{where}: {config.env_name(field)} reads {file!r}, not {TLS_FILES[field]}"
                    )
            if field == "signing_keys" and (file, source["secretName"]) != ("", "gati-signing"):
                problems.append(f"{where}: GATI_SIGNING_KEYS is not the gati-signing volume")
        if len(tls_secrets) > 1:
            problems.append(f"{where}: TLS files from several Secrets {sorted(tls_secrets)}")
        if service in ("inference", "cache", "trainer") and "GATI_SIGNING_KEYS" not in env:
            problems.append(f"{where}: no signing keys")
    return problems


def tls_secret_of(container: dict, spec: dict, objs: list[dict]) -> str | None:
    path = raw_env(container, objs).get("GATI_TLS_CERT")
    found = k8s.secret_file(container, spec, path) if path else None
    return found[1]["secretName"] if found else None


def certificate_problems(objs: list[dict]) -> list[str]:
    """The certificates behind the TLS Secrets: every mounted one is issued here, valid to
    serve and to call, for 127.0.0.1 (the probes) and for each name it is dialled by: its
    Service's names in the namespace, and the addresses the other services are given."""
    problems = []
    issued = cm.issued(objs)
    pods = {}  # workload name -> (pod labels, Certificate)
    for w, spec, c, _ in gati_containers(objs):
        secret = tls_secret_of(c, spec, objs)
        if secret is None:
            continue
        cert = issued.get(secret)
        if cert is None:
            problems.append(f"{k8s.describe(w)}: Secret {secret} is issued by no Certificate")
            continue
        pods[w["metadata"]["name"]] = (k8s.pod_template(w)["metadata"]["labels"], cert)
        cspec = cert["spec"]
        if not {"server auth", "client auth"} <= set(cspec.get("usages", [])):
            problems.append(f"{k8s.describe(cert)}: usages need server auth and client auth")
        if "127.0.0.1" not in cspec.get("ipAddresses", []):
            problems.append(f"{k8s.describe(cert)}: no 127.0.0.1, which the probes dial")
    for svc in k8s.by_kind(objs, "Service"):
        selector = {"matchLabels": svc["spec"].get("selector") or {}}
        for labels, cert in pods.values():
            if not k8s.selector_matches(selector, labels):
                continue
            name = svc["metadata"]["name"]
            wanted = {
                name, f"{name}.{NAMESPACE}", f"{name}.{NAMESPACE}.svc",
                f"{name}.{NAMESPACE}.svc.cluster.local",
            }  # fmt: skip
            missing = wanted - set(cert["spec"].get("dnsNames", []))
            if missing:
                problems.append(
                    f"{k8s.describe(cert)}: Service {name} names {sorted(missing)} are not covered"
                )
    for w, _, c, _ in gati_containers(objs):
        address = raw_env(c, objs).get("GATI_CACHE_ADDRESS")
        if address and "gati-cache" in pods:
            host = address.rpartition(":")[0]
            cert = pods["gati-cache"][1]["spec"]
            if host not in cert.get("dnsNames", []) + cert.get("ipAddresses", []):
                problems.append(
                    f"{k8s.describe(w)}: dials {host}, which the cache's certificate does not name"
                )
    return problems


def probe_problems(objs: list[dict]) -> list[str]:
    """Behind TLS, each probe is `gati health 127.0.0.1:PORT --service NAME` (the service's
    own name for startup and readiness, "" for liveness) with time for a Python start."""
    problems = []
    for w, _, c, service in gati_containers(objs):
        cfg = effective_config(c, service, objs)
        if cfg.tls_cert is None:
            continue
        where = f"{k8s.describe(w)} {c['name']}"
        for probe, asked in (
            ("startupProbe", HEALTH[service]),
            ("readinessProbe", HEALTH[service]),
            ("livenessProbe", ""),
        ):
            spec = c.get(probe, {})
            expected = ["gati", "health", f"127.0.0.1:{cfg.port}", "--service", asked]
            if spec.get("exec", {}).get("command") != expected or "grpc" in spec:
                problems.append(f"{where}: {probe} is not `{' '.join(expected)}`: {spec}")
            if spec.get("timeoutSeconds", 1) < 5:
                problems.append(
                    f"{where}: {probe} timeoutSeconds {spec.get('timeoutSeconds', 1)} < 5"
                )
        live = c.get("livenessProbe", {})
        if live.get("periodSeconds", 10) * live.get("failureThreshold", 3) <= cfg.drain_seconds:
            problems.append(f"{where}: liveness budget does not outlast the drain")
    return problems


# --- every overlay ---------------------------------------------------------------------------
@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_secrets_are_mounted_read_only(overlay: Path) -> None:
    assert secret_mount_problems(objs_of(overlay)) == []


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_passwords_only_through_secret_key_refs(overlay: Path) -> None:
    assert credential_problems(objs_of(overlay)) == []


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_key_material_lies_in_mounted_secrets(overlay: Path) -> None:
    assert key_material_problems(objs_of(overlay)) == []


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_every_service_signs_and_checks_with_one_keyring(overlay: Path) -> None:
    """All three services load the keys of gati-signing (a cache with keys would refuse an
    unsigned bundle; a trainer with keys, unsigned records): signing is never half on."""
    objs = objs_of(overlay)
    found = set()
    for _, _, c, service in gati_containers(objs):
        keyring = effective_config(c, service, objs).keyring()
        assert keyring is not None, f"{overlay.name} {service}: signing off"
        found.add((service, tuple(sorted(keyring.keys)), keyring.signing_id))
    assert {s for s, _, _ in found} == set(CONFIGS)
    assert len({(ids, signer) for _, ids, signer in found}) == 1, found


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_probes_speak_tls_where_tls_is_on(overlay: Path) -> None:
    assert probe_problems(objs_of(overlay)) == []


def test_the_optional_credentials_are_optional() -> None:
    """Without the Secret gati-kafka or a Redis username the services start and connect
    without them; with them, they reach the settings. A SASL protocol without the Secret is
    refused at start, naming the setting."""
    objs = objs_of("prod")
    containers = {s: c for _, _, c, s in gati_containers(objs)}
    trainer = effective_config(containers["trainer"], "trainer", objs)
    assert trainer.kafka_security_protocol == "PLAINTEXT"
    assert (trainer.kafka_sasl_username, trainer.kafka_sasl_password) == (None, None)
    assert trainer.redis_username is None

    k8s.find(objs, "ConfigMap", "gati-config")["data"]["kafka-security-protocol"] = "SASL_PLAINTEXT"
    secrets = {
        **k8s.SECRETS,
        "gati-kafka": {"username": "gati", "password": "not-a-real-password"},
        "gati-redis": {**k8s.SECRETS["gati-redis"], "username": "gati"},
    }
    for service in ("inference", "trainer"):
        cfg = effective_config(containers[service], service, objs, secrets)
        assert cfg.kafka_options()["sasl_plain_username"] == "gati"
        assert cfg.kafka_options()["sasl_plain_password"] == "not-a-real-password"
        with pytest.raises(config.ConfigError, match="kafka_sasl_username"):
            effective_config(containers[service], service, objs)
    for service in ("cache", "trainer"):
        cfg = effective_config(containers[service], service, objs, secrets)
        assert cfg.redis_options()["username"] == "gati"


def test_signing_key_rotation_as_documented() -> None:
    """docs/deploy.md's rotation: with a second key in the Secret the services refuse to
    guess which one signs, until `signing-key-id` in gati-config names it; every key in the
    directory still verifies."""
    objs = objs_of("prod")
    two = {**k8s.SECRETS, "gati-signing": {"old-1": "o" * 32, "new-2": "n" * 32}}
    containers = [(c, s) for _, _, c, s in gati_containers(objs)]
    for c, service in containers:
        with pytest.raises(config.ConfigError, match="signing_key_id"):
            effective_config(c, service, objs, two)
    for signer in ("old-1", "new-2"):
        k8s.find(objs, "ConfigMap", "gati-config")["data"]["signing-key-id"] = signer
        for c, service in containers:
            keyring = effective_config(c, service, objs, two).keyring()
            assert (keyring.signing_id, sorted(keyring.keys)) == (signer, ["new-2", "old-1"])
    doc = (k8s.REPO / "docs" / "deploy.md").read_text()
    assert "signing-key-id:" in doc and "create secret generic gati-signing" in doc


# --- overlays/tls ------------------------------------------------------------------------------
def test_tls_overlay_turns_tls_on_everywhere() -> None:
    """Every gati service serves TLS and dials its peers with it; the mesh services require
    client certificates, the client-facing inference endpoint does not; REST (plain HTTP
    only) is off; every mesh path between gati pods is mutual."""
    objs = objs_of(TLS_OVERLAY)
    configs = {}
    for w, _, c, service in gati_containers(objs):
        cfg = effective_config(c, service, objs)
        configs[w["metadata"]["name"]] = cfg
        assert cfg.tls_cert and cfg.tls_key and cfg.tls_ca, service
        assert cfg.tls_client_auth is CLIENT_AUTH[service], service
        assert cfg.client_tls() is not None, service
        assert getattr(cfg, "http_port", -1) == -1, f"{service}: plaintext REST beside TLS"
    for src, dst, port in k8s.allowed_paths(objs):
        if src in configs and dst in configs and port == configs[dst].port:
            caller, callee = configs[src], configs[dst]
            assert callee.tls_client_auth and caller.client_tls().cert, (src, dst, port)


def test_tls_overlay_secrets_are_the_cert_manager_layout() -> None:
    objs = objs_of(TLS_OVERLAY)
    for w, spec, c, service in gati_containers(objs):
        assert tls_secret_of(c, spec, objs) == f"gati-{service}-tls", k8s.describe(w)
        assert {m["mountPath"] for m, _ in k8s.secret_mounts(c, spec)} == {
            "/etc/gati/tls",
            "/etc/gati/signing",
        }


def test_tls_overlay_certificates_cover_the_service_names() -> None:
    objs = objs_of(TLS_OVERLAY)
    assert certificate_problems(objs) == []
    covered = {c["spec"]["secretName"] for c in cm.certificates(objs)}
    assert covered >= set(k8s.TLS_SECRETS)


def test_tls_overlay_cert_manager_objects_are_sound() -> None:
    """Only cert-manager's objects lack a schema offline; they pass the structural checks,
    and the CA chain is self-contained: each service certificate from the CA Issuer, whose
    Secret is the isCA certificate's, itself from the self-signed Issuer."""
    objs = objs_of(TLS_OVERLAY)
    errors = k8s.validate(objs)
    assert len(errors) == len(cm.objects(objs)) == 6, errors
    assert all("no schema" in e for e in errors), errors
    assert k8s.validate(objs, custom_groups={cm.GROUP}) == []
    assert cm.structure(objs) == []
    by_name = {c["metadata"]["name"]: c["spec"] for c in cm.certificates(objs)}
    assert by_name["gati-ca"]["isCA"] is True
    assert by_name["gati-ca"]["issuerRef"]["name"] == "gati-selfsigned"
    for service in CONFIGS:
        assert by_name[f"gati-{service}"]["issuerRef"]["name"] == "gati-ca"
    ca_issuer = k8s.find(objs, "Issuer", "gati-ca")
    assert ca_issuer["spec"]["ca"]["secretName"] == by_name["gati-ca"]["secretName"]


def test_the_rendered_probe_passes_with_a_certificate_for_the_certificates_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """End to end on this machine: a certificate for exactly the names and usages of the
    cache's Certificate (made like cert-manager's, by launch/certificates.py), the cache's
    rendered TLS settings serving gRPC health with mutual TLS, and its rendered readiness and
    liveness commands, run as `gati health` with the container's environment, answer SERVING.
    Without a client certificate the same call is refused."""
    from cli import health
    from launch.certificates import generate
    from services.common.grpc_server import build_server

    objs = objs_of(TLS_OVERLAY)
    (cache,) = [c for _, _, c, s in gati_containers(objs) if s == "cache"]
    cert = next(c["spec"] for c in cm.certificates(objs) if c["metadata"]["name"] == "gati-cache")
    made = generate(tmp_path, ("cache",), hosts=(*cert["dnsNames"], *cert["ipAddresses"]))
    files = {"tls.crt": made["cache"].cert, "tls.key": made["cache"].key, "ca.crt": made.ca}
    secrets = {**k8s.SECRETS, "gati-cache-tls": {k: v.read_text() for k, v in files.items()}}
    cfg = effective_config(cache, "cache", objs, secrets)
    assert cfg.tls_client_auth
    server, handle = build_server(
        "127.0.0.1", 0, 2, 1 << 20, (names.HEALTH_CACHE,), (), cfg.server_credentials()
    )
    server.start()
    try:
        handle.set_serving(True)
        env = k8s.mounted_env(cache, k8s.pod_spec_of(objs, cache), raw_env(cache, objs), secrets)
        for name in ("GATI_TLS_CA", "GATI_TLS_CERT", "GATI_TLS_KEY"):
            monkeypatch.setenv(name, env[name])

        def probe(command: list[str]) -> int:
            parser = argparse.ArgumentParser()
            health.add_arguments(parser)  # reads the environment set above
            argv = [a.replace(f":{cfg.port}", f":{handle.port}") for a in command[2:]]
            return health.run(parser.parse_args([*argv, "--timeout", "5"]))

        for kind in ("readinessProbe", "livenessProbe"):
            assert probe(cache[kind]["exec"]["command"]) == 0, kind
        monkeypatch.delenv("GATI_TLS_CERT")
        monkeypatch.delenv("GATI_TLS_KEY")
        assert probe(cache["readinessProbe"]["exec"]["command"]) == 2
    finally:
        server.stop(None)


# --- broken copies must fail ----------------------------------------------------------------
TLS = Path("components") / "tls"
CERTS = Path("components") / "cert-manager" / "certificate.yaml"
BREAKAGES = {
    "tls path outside the mount": (
        TLS / "configmap.yaml",
        "tls-ca: /etc/gati/tls/ca.crt",
        "tls-ca: /etc/ssl/certs/ca.crt",
        key_material_problems,
        "is in no mounted Secret",
    ),
    "key read as the certificate": (
        TLS / "configmap.yaml",
        "tls-cert: /etc/gati/tls/tls.crt",
        "tls-cert: /etc/gati/tls/tls.key",
        key_material_problems,
        "reads 'tls.key', not tls.crt",
    ),
    "writable secret mount": (
        TLS / "cache-deployment.yaml",
        "              mountPath: /etc/gati/tls\n              readOnly: true",
        "              mountPath: /etc/gati/tls\n              readOnly: false",
        secret_mount_problems,
        "not readOnly",
    ),
    "world-readable key": (
        TLS / "trainer-deployment.yaml",
        "defaultMode: 288",
        "defaultMode: 420",
        secret_mount_problems,
        "readable by others",
    ),
    "grpc probe left behind": (
        TLS / "cache-deployment.yaml",
        "          readinessProbe:\n            grpc: null\n",
        "          readinessProbe:\n",
        probe_problems,
        "readinessProbe is not `gati health 127.0.0.1:8011 --service gati.v1.CacheService`",
    ),
    "probe asks the wrong service": (
        TLS / "trainer-deployment.yaml",
        "                - gati.v1.Trainer\n            periodSeconds: 10",
        "                - gati.v1.TrainerService\n            periodSeconds: 10",
        probe_problems,
        "readinessProbe is not",
    ),
    "probe without time for Python": (
        TLS / "inference-deployment.yaml",
        "            periodSeconds: 20\n            timeoutSeconds: 5",
        "            periodSeconds: 20\n            timeoutSeconds: 1",
        probe_problems,
        "livenessProbe timeoutSeconds 1 < 5",
    ),
    "service name not covered": (
        CERTS,
        "    - gati-cache.gati.svc\n",
        "",
        certificate_problems,
        "Service gati-cache names ['gati-cache.gati.svc'] are not covered",
    ),
    "probe address not covered": (
        CERTS,
        "  ipAddresses:\n    - 127.0.0.1\n",
        "",
        certificate_problems,
        "no 127.0.0.1",
    ),
    "server-only certificate": (
        CERTS,
        "    - client auth\n",
        "",
        certificate_problems,
        "usages need server auth and client auth",
    ),
    "password in the redis url": (
        Path("base") / "common" / "configmap.yaml",
        "redis-url: redis://gati-redis:6379/0",
        "redis-url: redis://:hunter2hunter2@gati-redis:6379/0",
        credential_problems,
        "a password in a URL",
    ),
    "literal password": (
        Path("base") / "cache" / "deployment.yaml",
        """            - name: GATI_REDIS_PASSWORD
              valueFrom:
                secretKeyRef:
                  name: gati-redis
                  key: password
""",
        """            - name: GATI_REDIS_PASSWORD
              value: hunter2hunter2
""",
        credential_problems,
        "GATI_REDIS_PASSWORD not from a Secret",
    ),
    "optional signing keys": (
        Path("base") / "trainer" / "deployment.yaml",
        "            secretName: gati-signing\n",
        "            secretName: gati-signing\n            optional: true\n",
        secret_mount_problems,
        "optional (a pod would start without its keys)",
    ),
}


@pytest.mark.parametrize("case", BREAKAGES)
def test_each_breakage_is_caught(tree: Path, case: str) -> None:
    file, old, new, check, message = BREAKAGES[case]
    k8s.edit(tree / file, old, new)
    problems = check(kustomize.render(tree / "overlays" / TLS_OVERLAY))
    assert any(message in p for p in problems), problems


# (what to replace in certificate.yaml, by what, the start of the message cm.structure gives)
CERT_BREAKAGES = {
    "misspelt field": ("  dnsNames:\n", "  dnsName:\n", "unknown field(s) ['dnsName']"),
    "unknown usage": ("    - server auth\n", "    - server-auth\n", "not cert-manager key usages"),
    "missing issuer": (
        "    name: gati-ca\n    kind: Issuer",
        "    name: gati-root\n    kind: Issuer",
        "issuerRef names Issuer 'gati-root'",
    ),
    "renewal after expiry": (
        "  renewBefore: 720h\n",
        "  renewBefore: 2400h\n",
        "renewBefore must be shorter than spec.duration",
    ),
    "wrong key size": (
        "    size: 256\n    rotationPolicy: Always",
        "    size: 2048\n    rotationPolicy: Always",
        "is no ECDSA size",
    ),
    "bad ip": ("    - 127.0.0.1\n", "    - 127.0.0.256\n", "is not an IP address"),
    "wrong api version": (
        "apiVersion: cert-manager.io/v1\nkind: Certificate",
        "apiVersion: cert-manager.io/v1alpha2\nkind: Certificate",
        "expected cert-manager.io/v1",
    ),
}


@pytest.mark.parametrize("case", CERT_BREAKAGES)
def test_broken_cert_manager_objects_fail(tree: Path, case: str) -> None:
    old, new, message = CERT_BREAKAGES[case]
    k8s.edit(tree / CERTS, old, new)
    problems = cm.structure(kustomize.render(tree / "overlays" / TLS_OVERLAY))
    assert any(message in p for p in problems), problems


def test_a_grpc_probe_behind_tls_fails_the_contract_checks() -> None:
    """test_k8s_contracts' port and health check refuses a kubelet grpc probe on a TLS port."""
    from tests.deploy.test_k8s_contracts import check_ports_and_health

    objs = copy.deepcopy(objs_of(TLS_OVERLAY))
    spec = k8s.pod_template(k8s.find(objs, "Deployment", "gati-cache"))["spec"]
    (cache,) = spec["containers"]
    cache["livenessProbe"] = {"grpc": {"port": 8011, "service": ""}, "periodSeconds": 10}
    with pytest.raises(AssertionError, match="cannot reach a TLS port"):
        check_ports_and_health(objs, "broken")
