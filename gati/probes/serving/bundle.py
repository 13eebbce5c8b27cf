"""Probe bundle: a versioned, self-describing, verified artifact of tensors plus a JSON manifest.

A bundle travels through Redis and is read by the cache service, so it is *data*: tensors in
safetensors, everything else in a JSON manifest, and a sha256 checksum over both. Nothing is
unpickled and no code is loaded. A bundle that fails any check is refused with `BundleError`,
whose message says what was wrong, so the caller can keep its last good bundle.

Wire form (`to_bytes`): b"GATIBNDL" magic, u64 little-endian manifest length, the manifest as
UTF-8 JSON, then the safetensors bytes. Directory form (`save`): `manifest.json` and
`tensors.safetensors`.

Manifest (format_version 1), the fields a reader relies on:
    format, format_version, model {id, arch}, model_fingerprint, version (int >= 0), created
    (ISO-8601 UTC), num_classes, agreement_target, layers (the plan, stage order; may be empty),
    candidates (optional: inactive probes kept for analysis), and per layer entry: layer,
    variant, reduction, channels, input_dim, tensors {name: {dtype, shape}}, ... ; checksum.
    Optional per active layer `live` {reduction, k, radius} with tensors <prefix>live_mu and
    <prefix>live_scale: the cache service's live memory rule (`serving.live`), calibrated
    by the fit (`gati.probes.fitting.live_calibration`); radius 0 means the rule is off.
    Optional `cuts` (written by the fit): the model's cut points in stage order, as
    [{name, channels}] (channels null where no records were fitted), which the cache service
    checks probe widths against (`gati.probes.serving.fitness`).
An empty `layers` list is a valid bundle: it says "no caches pay for this model now".
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import struct
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy as stnp

FORMAT = "gati-probe-bundle"
FORMAT_VERSION = 1
MAGIC = b"GATIBNDL"
MANIFEST_FILE = "manifest.json"
TENSORS_FILE = "tensors.safetensors"
MAX_MANIFEST_BYTES = 16 * 1024 * 1024  # a manifest is small; a huge length field is corruption

# dtypes a bundle may hold (safetensors handles more; a probe needs no others).
DTYPES = {"float32", "float16", "int32", "int64", "uint8"}
REQUIRED_FIELDS = ("format", "format_version", "model", "model_fingerprint", "version", "layers")
REQUIRED_LAYER_FIELDS = ("layer", "variant", "reduction", "input_dim", "tensors")


class BundleError(ValueError):
    """A bundle is malformed, corrupt or does not fit the model; the message says which.
    The subclasses name the check that failed, for callers that sort refusals."""


class ChecksumError(BundleError):
    """The content does not hash to the checksum its manifest declares."""


class VersionError(BundleError):
    """The version number is not a valid one, or not the one the bundle is stored under."""


class LayerError(BundleError):
    """A layer entry, or the probe it describes, is malformed."""


def canonical_json(obj: Any) -> bytes:
    """Deterministic JSON bytes (sorted keys, no spaces, no NaN) for hashing."""
    try:
        return json.dumps(
            obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
        ).encode()
    except ValueError as exc:  # NaN or inf somewhere in the manifest
        raise BundleError(f"manifest is not valid JSON: {exc}") from None


def compute_checksum(manifest: Mapping[str, Any], tensors: Mapping[str, np.ndarray]) -> str:
    """sha256 over the canonical manifest (checksum field excluded) and every tensor's bytes."""
    digest = hashlib.sha256(canonical_json({k: v for k, v in manifest.items() if k != "checksum"}))
    for name in sorted(tensors):
        t = np.ascontiguousarray(tensors[name])
        digest.update(b"\0" + name.encode() + b"\0" + f"{t.dtype.name}{list(t.shape)}".encode())
        digest.update(t.tobytes())
    return "sha256:" + digest.hexdigest()


def tensor_spec(arr: np.ndarray) -> dict[str, Any]:
    """The manifest's declaration of one tensor."""
    return {"dtype": arr.dtype.name, "shape": [int(s) for s in arr.shape]}


@dataclass(frozen=True)
class Bundle:
    """Manifest + named tensors. Build with `Bundle.create` (seals the checksum)."""

    manifest: dict[str, Any]
    tensors: dict[str, np.ndarray] = field(repr=False)

    # ---- construction --------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        *,
        model_id: str,
        arch: str,
        model_fingerprint: str,
        layers: list[dict[str, Any]],
        tensors: Mapping[str, np.ndarray],
        version: int = 1,
        num_classes: int = 10,
        agreement_target: float | None = None,
        candidates: list[dict[str, Any]] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> Bundle:
        """A sealed, validated bundle. Layer entries' `tensors` declarations are filled in from
        the arrays whose names start with the entry's `prefix` when the entry omits them.
        `extra` adds free-form manifest fields (cost model, calibration report)."""
        layers = copy.deepcopy(layers)
        candidates = copy.deepcopy(candidates or [])
        arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
        for entry in [*layers, *candidates]:
            if "tensors" not in entry:
                prefix = entry["prefix"]
                entry["tensors"] = {
                    k: tensor_spec(v) for k, v in sorted(arrays.items()) if k.startswith(prefix)
                }
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model": {"id": model_id, "arch": arch},
            "model_fingerprint": model_fingerprint,
            "version": int(version),
            "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "num_classes": int(num_classes),
            "agreement_target": agreement_target,
            "layers": layers,
            "candidates": candidates,
        }
        for key, value in (extra or {}).items():
            if key in manifest:
                raise BundleError(f"extra manifest field {key!r} would overwrite a core field")
            manifest[key] = copy.deepcopy(value)
        bundle = cls._sealed(manifest, arrays)
        bundle.verify()
        return bundle

    @classmethod
    def _sealed(cls, manifest: dict[str, Any], tensors: Mapping[str, np.ndarray]) -> Bundle:
        manifest = copy.deepcopy(manifest)
        arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
        manifest["checksum"] = compute_checksum(manifest, arrays)
        return cls(manifest, arrays)

    def with_version(self, version: int) -> Bundle:
        """The same probes under a new version number (checksum recomputed)."""
        if int(version) < 0:
            raise VersionError(f"version must be >= 0, got {version}")
        manifest = copy.deepcopy(self.manifest)
        manifest["version"] = int(version)
        return Bundle._sealed(manifest, self.tensors)

    def with_thresholds(self, thresholds: Mapping[str, float]) -> Bundle:
        """A copy whose per-layer selector thresholds are replaced (e.g. a live guard tightening
        them). Same version number: bump it with `with_version` before publishing."""
        manifest = copy.deepcopy(self.manifest)
        known = {e["layer"] for e in manifest["layers"]}
        unknown = set(thresholds) - known
        if unknown:
            raise BundleError(
                f"no active layer {sorted(unknown)} in bundle; active: {sorted(known)}"
            )
        for entry in manifest["layers"]:
            if entry["layer"] in thresholds:
                t = float(thresholds[entry["layer"]])
                if not 0.0 <= t <= 1.0:
                    raise BundleError(f"threshold for {entry['layer']} must be in [0, 1], got {t}")
                entry["threshold"] = t
        return Bundle._sealed(manifest, self.tensors)

    # ---- accessors -----------------------------------------------------------------------
    @property
    def version(self) -> int:
        return int(self.manifest["version"])

    @property
    def model_fingerprint(self) -> str:
        return str(self.manifest["model_fingerprint"])

    @property
    def model_id(self) -> str:
        return str(self.manifest["model"]["id"])

    @property
    def checksum(self) -> str:
        return str(self.manifest["checksum"])

    @property
    def layers(self) -> list[dict[str, Any]]:
        """Active layer entries (the plan), in stage order."""
        return self.manifest["layers"]

    @property
    def candidates(self) -> list[dict[str, Any]]:
        """Inactive probes kept for analysis (oracle over every candidate); may be empty."""
        return self.manifest.get("candidates", [])

    @property
    def plan(self) -> list[tuple[str, str]]:
        """(layer, reduction) of every active probe, in stage order; empty = no caches."""
        return [(e["layer"], e["reduction"]) for e in self.layers]

    def without_candidates(self) -> Bundle:
        """The bundle without its inactive candidate probes (what the cache service needs),
        under the same version; itself when it carries none."""
        if not self.candidates:
            return self
        active = {name for entry in self.layers for name in entry["tensors"]}
        tensors = {k: v for k, v in self.tensors.items() if k in active}
        out = Bundle._sealed({**self.manifest, "candidates": []}, tensors)
        out.verify()
        return out

    def layer_tensors(self, entry: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """The tensors one layer entry declares, by their short role name (prefix removed)."""
        prefix = entry.get("prefix", "")
        return {name[len(prefix) :]: self.tensors[name] for name in entry["tensors"]}

    def nbytes(self) -> int:
        return int(sum(t.nbytes for t in self.tensors.values()))

    # ---- verification --------------------------------------------------------------------
    def verify(self, expected_fingerprint: str | None = None) -> None:
        """Raise BundleError unless format, checksum, tensors and fingerprint all check out."""
        m = self.manifest
        _verify_header(m)
        declared = m.get("checksum")
        actual = compute_checksum(m, self.tensors)
        if declared != actual:
            raise ChecksumError(
                f"checksum mismatch: manifest says {declared}, content hashes to {actual}; "
                "the bundle is corrupt or was modified"
            )
        if expected_fingerprint is not None and m["model_fingerprint"] != expected_fingerprint:
            raise BundleError(
                f"bundle was fitted to model fingerprint {m['model_fingerprint']}, but the "
                f"served model's fingerprint is {expected_fingerprint}: refit the probes"
            )
        self._verify_tensors()

    def _verify_tensors(self) -> None:
        for key in ("layers", "candidates"):
            if not isinstance(self.manifest.get(key, []), list):
                raise BundleError(f"manifest {key!r} must be a list")
        entries = [*self.manifest["layers"], *self.manifest.get("candidates", [])]
        declared: set[str] = set()
        seen_layers: set[str] = set()
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise LayerError(f"layer entry {i} must be an object")
            absent = [k for k in REQUIRED_LAYER_FIELDS if k not in entry]
            if absent:
                raise LayerError(f"layer entry {i} lacks fields {absent}")
            if i < len(self.manifest["layers"]):
                if entry["layer"] in seen_layers:
                    raise LayerError(f"layer {entry['layer']!r} is active twice")
                seen_layers.add(entry["layer"])
            if not isinstance(entry["tensors"], dict) or not all(
                isinstance(s, dict) for s in entry["tensors"].values()
            ):
                raise LayerError(f"layer entry {i}: 'tensors' must map names to specs")
            for name, spec in entry["tensors"].items():
                declared.add(name)
                if name not in self.tensors:
                    raise BundleError(
                        f"tensor {name!r} of layer {entry['layer']!r} is declared in the "
                        "manifest but missing from the tensors"
                    )
                t = self.tensors[name]
                if t.dtype.name != spec["dtype"] or list(t.shape) != list(spec["shape"]):
                    raise BundleError(
                        f"tensor {name!r} is {t.dtype.name}{list(t.shape)}, manifest declares "
                        f"{spec['dtype']}{list(spec['shape'])}"
                    )
        for name, t in self.tensors.items():
            if t.dtype.name not in DTYPES:
                raise BundleError(f"tensor {name!r} has dtype {t.dtype.name}; allowed {DTYPES}")
        extra = sorted(set(self.tensors) - declared)
        if extra:
            raise BundleError(f"tensors {extra[:5]} are not declared by any layer entry")

    # ---- serialisation -------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """One self-contained blob: magic, u64 manifest length, manifest JSON, safetensors."""
        manifest = json.dumps(self.manifest, sort_keys=True, allow_nan=False).encode()
        return MAGIC + struct.pack("<Q", len(manifest)) + manifest + stnp.save(self.tensors)

    @classmethod
    def from_bytes(cls, data: bytes, *, expected_fingerprint: str | None = None) -> Bundle:
        """Parse and verify a blob from `to_bytes`; BundleError on anything wrong."""
        data = bytes(data)
        head = len(MAGIC) + 8
        if len(data) < head or not data.startswith(MAGIC):
            raise BundleError(
                f"not a probe bundle: expected {len(data)} bytes to start with {MAGIC!r}"
            )
        (length,) = struct.unpack("<Q", data[len(MAGIC) : head])
        if length > MAX_MANIFEST_BYTES or head + length > len(data):
            raise BundleError(
                f"truncated or corrupt bundle: manifest length {length} with {len(data)} bytes"
            )
        manifest = _parse_manifest(data[head : head + length])
        tensors = _parse_tensors(data[head + length :])
        bundle = cls(manifest, tensors)
        bundle.verify(expected_fingerprint)
        return bundle

    def save(self, directory: str | Path) -> Path:
        """Write `manifest.json` and `tensors.safetensors` into `directory` (created)."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        _atomic_write(out / TENSORS_FILE, stnp.save(self.tensors))
        text = json.dumps(self.manifest, indent=1, sort_keys=True, allow_nan=False) + "\n"
        _atomic_write(out / MANIFEST_FILE, text.encode())
        return out

    @classmethod
    def load(cls, directory: str | Path, expected_fingerprint: str | None = None) -> Bundle:
        """Read and verify a bundle directory written by `save`."""
        d = Path(directory)
        for name in (MANIFEST_FILE, TENSORS_FILE):
            if not (d / name).is_file():
                raise BundleError(f"{d} is not a bundle directory: {name} is missing")
        manifest = _parse_manifest((d / MANIFEST_FILE).read_bytes())
        tensors = _parse_tensors((d / TENSORS_FILE).read_bytes())
        bundle = cls(manifest, tensors)
        bundle.verify(expected_fingerprint)
        return bundle


def _verify_header(m: Any) -> None:
    """Format fields, checked before any tensor byte is parsed."""
    if not isinstance(m, dict):
        raise BundleError("manifest must be a JSON object")
    missing = [k for k in REQUIRED_FIELDS if k not in m]
    if missing:
        raise BundleError(f"manifest lacks required fields {missing}")
    if m["format"] != FORMAT:
        raise BundleError(f"not a probe bundle: format {m['format']!r}, expected {FORMAT!r}")
    if m["format_version"] != FORMAT_VERSION:
        raise BundleError(
            f"bundle format_version {m['format_version']} is not supported "
            f"(this reader understands {FORMAT_VERSION})"
        )
    if not isinstance(m["version"], int) or m["version"] < 0:
        raise BundleError(f"bundle version must be an int >= 0, got {m['version']!r}")


def _parse_manifest(raw: bytes) -> dict[str, Any]:
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        # RecursionError: a hostile manifest nested deeper than the parser goes
        raise BundleError(f"manifest is not valid UTF-8 JSON: {exc}") from None
    _verify_header(manifest)
    return manifest


def _parse_tensors(raw: bytes) -> dict[str, np.ndarray]:
    try:
        return dict(stnp.load(raw))
    except Exception as exc:  # safetensors raises its own error types
        raise BundleError(f"tensor section is not valid safetensors: {exc}") from None


def _atomic_write(path: Path, data: bytes) -> None:
    """Write via a temporary file and rename, so a reader never sees half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
