"""Offline checks of the cert-manager objects of components/cert-manager (Issuer, Certificate).

kubernetes-validate knows Kubernetes' own kinds only, and no cert-manager CRD is available
offline, so these custom resources are checked here by hand, as components/kserve's are
(`kserve_checks`):

- `structure`: the fields cert-manager's v1 Go types define (cert-manager.io/v1 Issuer and
  Certificate, cert-manager 1.12 or later) and nothing else, the required ones present; the
  enumerations (key usages, key algorithms and sizes, rotation policy, issuer kinds) and
  durations as cert-manager parses them; every Certificate's issuerRef names an Issuer of
  the render (or a ClusterIssuer, which lives outside it), a CA Issuer's Secret is made by an
  `isCA` Certificate, and no two Certificates write one Secret.
- `issued`: which Certificate writes each Secret (secretName -> Certificate), for the checks
  that follow a mounted Secret back to the names it is valid for.

What this cannot see: cert-manager's webhook (defaulting, cross-field rules beyond these) and
its controller. The shapes were read from cert-manager's API types (pkg/apis/certmanager/v1),
not tried on a cluster.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from tests.deploy import k8s_checks as k8s

Obj = dict[str, Any]

GROUP = "cert-manager.io"
API = f"{GROUP}/v1"
KINDS = {"Issuer", "ClusterIssuer", "Certificate"}

# CertificateSpec (v1).
CERTIFICATE_FIELDS = {
    "subject", "literalSubject", "commonName", "duration", "renewBefore",
    "renewBeforePercentage", "dnsNames", "ipAddresses", "uris", "otherNames",
    "emailAddresses", "secretName", "secretTemplate", "keystores", "issuerRef", "isCA",
    "usages", "privateKey", "signatureAlgorithm", "encodeUsagesInRequest",
    "revisionHistoryLimit", "additionalOutputFormats", "nameConstraints",
}  # fmt: skip
PRIVATE_KEY_FIELDS = {"rotationPolicy", "encoding", "algorithm", "size"}
ISSUER_REF_FIELDS = {"name", "kind", "group"}
SECRET_TEMPLATE_FIELDS = {"annotations", "labels"}
# IssuerConfig (v1): exactly one of these.
ISSUER_TYPES = {"acme", "ca", "vault", "selfSigned", "venafi"}
CA_FIELDS = {"secretName", "crlDistributionPoints", "ocspServers", "issuingCertificateURLs"}
SELF_SIGNED_FIELDS = {"crlDistributionPoints"}
# KeyUsage (v1): the values cert-manager accepts.
USAGES = {
    "signing", "digital signature", "content commitment", "key encipherment", "key agreement",
    "data encipherment", "cert sign", "crl sign", "encipher only", "decipher only", "any",
    "server auth", "client auth", "code signing", "email protection", "s/mime",
    "ipsec end system", "ipsec tunnel", "ipsec user", "timestamping", "ocsp signing",
    "microsoft sgc", "netscape sgc",
}  # fmt: skip
KEY_SIZES = {"RSA": {2048, 3072, 4096, 8192}, "ECDSA": {256, 384, 521}, "Ed25519": {None}}
ROTATION_POLICIES = {"Never", "Always"}
ENCODINGS = {"PKCS1", "PKCS8"}
# A Go time.Duration as cert-manager writes them: 2160h, 90m, 1h30m0s ...
DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)(h|m|s|ms|us|ns))+$")
DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(h|m|s|ms|us|ns)")
SECONDS = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
MIN_DURATION_S = 3600  # cert-manager refuses a certificate shorter than an hour


def objects(objs: list[Obj], kind: str | None = None) -> list[Obj]:
    return [o for o in objs if k8s.group_of(o) == GROUP and (kind is None or o.get("kind") == kind)]


def certificates(objs: list[Obj]) -> list[Obj]:
    return objects(objs, "Certificate")


def issued(objs: list[Obj]) -> dict[str, Obj]:
    """secretName -> the Certificate that writes that Secret."""
    return {c["spec"]["secretName"]: c for c in certificates(objs) if "secretName" in c["spec"]}


def seconds(duration: str) -> float | None:
    """A Go duration in seconds; None when it is not one."""
    if not isinstance(duration, str) or not DURATION.match(duration):
        return None
    return sum(float(n) * SECONDS[unit] for n, unit in DURATION_PART.findall(duration))


def _unknown(where: str, obj: Any, allowed: set[str]) -> list[str]:
    if not isinstance(obj, dict):
        return [f"{where}: expected a mapping, found {type(obj).__name__}"]
    extra = sorted(set(obj) - allowed)
    return [f"{where}: unknown field(s) {extra}"] if extra else []


def _strings(where: str, values: Any) -> list[str]:
    if values is None:
        return []
    if not isinstance(values, list) or not all(isinstance(v, str) and v for v in values):
        return [f"{where}: expected a list of non-empty strings"]
    return []


def _issuer(obj: Obj) -> list[str]:
    where = k8s.describe(obj)
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return [f"{where}: spec is required"]
    errors = _unknown(f"{where}: spec", spec, ISSUER_TYPES)
    chosen = sorted(set(spec) & ISSUER_TYPES)
    if len(chosen) != 1:
        errors.append(f"{where}: spec needs exactly one issuer type of {sorted(ISSUER_TYPES)}")
    if "ca" in spec:
        errors += _unknown(f"{where}: spec.ca", spec["ca"], CA_FIELDS)
        if not isinstance(spec["ca"], dict) or not spec["ca"].get("secretName"):
            errors.append(f"{where}: spec.ca.secretName is required")
    if "selfSigned" in spec:
        errors += _unknown(f"{where}: spec.selfSigned", spec["selfSigned"], SELF_SIGNED_FIELDS)
    return errors


def _certificate(obj: Obj) -> list[str]:
    where = k8s.describe(obj)
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return [f"{where}: spec is required"]
    errors = _unknown(f"{where}: spec", spec, CERTIFICATE_FIELDS)
    if not isinstance(spec.get("secretName"), str) or not spec.get("secretName"):
        errors.append(f"{where}: spec.secretName is required")
    ref = spec.get("issuerRef")
    if not isinstance(ref, dict) or not ref.get("name"):
        errors.append(f"{where}: spec.issuerRef.name is required")
    else:
        errors += _unknown(f"{where}: spec.issuerRef", ref, ISSUER_REF_FIELDS)
        if ref.get("group", GROUP) == GROUP and ref.get("kind", "Issuer") not in (
            "Issuer",
            "ClusterIssuer",
        ):
            errors.append(f"{where}: spec.issuerRef.kind {ref.get('kind')!r} is no issuer kind")
    for key in ("dnsNames", "uris", "emailAddresses", "ipAddresses"):
        errors += _strings(f"{where}: spec.{key}", spec.get(key))
    for ip in spec.get("ipAddresses") or []:
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            errors.append(f"{where}: spec.ipAddresses: {ip!r} is not an IP address")
    names = [spec.get(k) for k in ("commonName", "dnsNames", "ipAddresses", "uris")]
    if not spec.get("literalSubject") and not any(names) and not spec.get("emailAddresses"):
        errors.append(f"{where}: names nothing (commonName, dnsNames, ipAddresses, uris...)")
    usages = spec.get("usages")
    errors += _strings(f"{where}: spec.usages", usages)
    if bad := sorted(set(usages or []) - USAGES):
        errors.append(f"{where}: spec.usages {bad} are not cert-manager key usages")
    if "secretTemplate" in spec:
        errors += _unknown(
            f"{where}: spec.secretTemplate", spec["secretTemplate"], SECRET_TEMPLATE_FIELDS
        )
    if "isCA" in spec and not isinstance(spec["isCA"], bool):
        errors.append(f"{where}: spec.isCA must be a boolean")
    key = spec.get("privateKey", {})
    errors += _unknown(f"{where}: spec.privateKey", key, PRIVATE_KEY_FIELDS)
    if isinstance(key, dict):
        algorithm = key.get("algorithm", "RSA")
        if algorithm not in KEY_SIZES:
            errors.append(
                f"{where}: spec.privateKey.algorithm {algorithm!r} not in {sorted(KEY_SIZES)}"
            )
        elif "size" in key and key["size"] not in KEY_SIZES[algorithm]:
            errors.append(f"{where}: spec.privateKey.size {key['size']!r} is no {algorithm} size")
        if "rotationPolicy" in key and key["rotationPolicy"] not in ROTATION_POLICIES:
            errors.append(f"{where}: spec.privateKey.rotationPolicy {key['rotationPolicy']!r}")
        if "encoding" in key and key["encoding"] not in ENCODINGS:
            errors.append(f"{where}: spec.privateKey.encoding {key['encoding']!r}")
    duration = seconds(spec.get("duration", "2160h"))
    renew = seconds(spec["renewBefore"]) if "renewBefore" in spec else 0.0
    if duration is None:
        errors.append(f"{where}: spec.duration {spec.get('duration')!r} is not a duration")
    elif duration < MIN_DURATION_S:
        errors.append(f"{where}: spec.duration {spec['duration']} is under an hour")
    if renew is None:
        errors.append(f"{where}: spec.renewBefore {spec.get('renewBefore')!r} is not a duration")
    elif duration is not None and renew >= duration:
        errors.append(f"{where}: spec.renewBefore must be shorter than spec.duration")
    return errors


def structure(objs: list[Obj]) -> list[str]:
    """One message per problem in the render's cert-manager objects; empty when none."""
    errors: list[str] = []
    found = objects(objs)
    for obj in found:
        where = k8s.describe(obj)
        if obj.get("apiVersion") != API:
            errors.append(f"{where}: apiVersion {obj.get('apiVersion')}, expected {API}")
        if obj.get("kind") not in KINDS:
            errors.append(f"{where}: kind {obj.get('kind')} is not one of {sorted(KINDS)}")
        elif obj["kind"] == "Certificate":
            errors += _certificate(obj)
        else:
            errors += _issuer(obj)
    issuers = {o["metadata"]["name"]: o for o in objects(objs, "Issuer")}
    writers: dict[str, list[str]] = {}
    for cert in certificates(objs):
        spec = cert.get("spec") or {}
        writers.setdefault(spec.get("secretName"), []).append(k8s.describe(cert))
        ref = spec.get("issuerRef") or {}
        local = ref.get("group", GROUP) == GROUP and ref.get("kind", "Issuer") == "Issuer"
        if local and ref.get("name") not in issuers:
            errors.append(
                f"{k8s.describe(cert)}: issuerRef names Issuer {ref.get('name')!r}, which "
                f"is not in the render (have {sorted(issuers)})"
            )
    for secret, names in writers.items():
        if len(names) > 1:
            errors.append(f"Secret {secret} is written by {len(names)} Certificates: {names}")
    by_secret = issued(objs)
    for issuer in issuers.values():
        ca = (issuer.get("spec") or {}).get("ca")
        if isinstance(ca, dict) and ca.get("secretName"):
            cert = by_secret.get(ca["secretName"])
            if cert is not None and cert["spec"].get("isCA") is not True:
                errors.append(
                    f"{k8s.describe(issuer)}: its Secret {ca['secretName']} comes from "
                    f"{k8s.describe(cert)}, which is not isCA"
                )
    return errors
