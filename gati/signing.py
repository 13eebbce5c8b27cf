"""Who made this bundle or record: HMAC-SHA256 under a named key, so keys can rotate.

A checksum says bytes are whole; it cannot say who wrote them. Anyone who can write to Redis
or to the records topic could otherwise publish a well-formed bundle that answers wrongly, or
teach the trainer wrong labels. So the writers (the trainer for bundles, the inference
service for records) sign, and the readers refuse what is unsigned or signed wrongly.

Keys live in a directory, one file per key, the file's name its key id: exactly what a
Kubernetes Secret mounted as a volume gives (its `..data` links and dotfiles are skipped).
One key signs (`signing_key_id`, or the only key there is); every key in the directory
verifies. Rotation: add the new key to every reader's directory, then make it the signing key,
then remove the old one once nothing it signed is in use.

Wire forms:
- a bundle in Redis: `SEAL_MAGIC`, u8 key id length, key id, 32-byte MAC, then the bundle bytes
  (`Bundle.to_bytes`: manifest and tensors), the MAC over those bundle bytes;
- a record on Kafka: the value is untouched, and two headers carry the key id and the MAC.

Without keys (local development) nothing is signed and nothing is checked; a sealed bundle is
still read, its seal set aside.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from gati.config import ConfigError, setting

SEAL_MAGIC = b"GATISIG1"
MAC_BYTES = 32
MIN_KEY_BYTES = 16  # a shorter secret is a typo, not a key
KEY_HEADER = "gati-key-id"
MAC_HEADER = "gati-mac"


class SignatureError(ValueError):
    """Bytes that are unsigned, signed with an unknown key, or whose signature does not match."""


def _mac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


@dataclass(frozen=True)
class Keyring:
    """The keys this process may verify with, and the one it signs with."""

    keys: Mapping[str, bytes]  # key id -> secret
    signing_id: str

    def __post_init__(self) -> None:
        if self.signing_id not in self.keys:
            raise ConfigError(
                f"signing_key_id: {self.signing_id!r} is not among the keys "
                f"({', '.join(sorted(self.keys)) or 'none'})"
            )

    def __repr__(self) -> str:  # never the secrets
        return f"Keyring(ids={sorted(self.keys)}, signing_id={self.signing_id!r})"

    @classmethod
    def load(cls, directory: str | Path, signing_id: str | None = None) -> Keyring:
        """Every key file in `directory`; ConfigError naming what is wrong."""
        root = Path(directory)
        if not root.is_dir():
            raise ConfigError(f"signing_keys: {root} is not a directory of key files")
        keys = {}
        for path in sorted(root.iterdir()):
            if path.name.startswith(".") or not path.is_file():  # a Secret's ..data, ..2026_...
                continue
            secret = path.read_bytes().strip()
            if len(secret) < MIN_KEY_BYTES:
                raise ConfigError(
                    f"signing_keys: key {path.name!r} holds {len(secret)} bytes, "
                    f"fewer than {MIN_KEY_BYTES}"
                )
            if len(path.name.encode()) > 255:
                raise ConfigError(f"signing_keys: key id {path.name[:40]!r}... is too long")
            keys[path.name] = secret
        if not keys:
            raise ConfigError(f"signing_keys: {root} holds no key files")
        if signing_id is None:
            if len(keys) > 1:
                raise ConfigError(
                    f"signing_key_id: {root} holds {len(keys)} keys "
                    f"({', '.join(sorted(keys))}); name the one that signs"
                )
            (signing_id,) = keys
        return cls(keys, signing_id)

    def _key(self, key_id: str) -> bytes:
        try:
            return self.keys[key_id]
        except KeyError:
            raise SignatureError(f"signed with unknown key {key_id[:64]!r}") from None

    # ---- bundles: a seal in front of the bytes ----------------------------------------------
    def seal(self, data: bytes) -> bytes:
        key_id = self.signing_id.encode()
        mac = _mac(self.keys[self.signing_id], data)
        return SEAL_MAGIC + struct.pack("B", len(key_id)) + key_id + mac + data

    def unseal(self, sealed: bytes) -> bytes:
        """The signed bytes; SignatureError if unsigned or not signed by one of our keys."""
        key_id, mac, data = split_seal(sealed)
        if key_id is None:
            raise SignatureError("unsigned (signing is on: every bundle must be signed)")
        if not hmac.compare_digest(mac, _mac(self._key(key_id), data)):
            raise SignatureError(f"signature does not match key {key_id!r}")
        return data

    # ---- records: key id and MAC in Kafka headers -------------------------------------------
    def headers(self, value: bytes) -> list[tuple[str, bytes]]:
        return [
            (KEY_HEADER, self.signing_id.encode()),
            (MAC_HEADER, _mac(self.keys[self.signing_id], value)),
        ]

    def check_headers(self, value: bytes, headers: Iterable[tuple[str, bytes]] | None) -> None:
        """SignatureError unless `headers` carry a MAC of `value` under one of our keys."""
        found = dict(headers or ())
        key_id, mac = found.get(KEY_HEADER), found.get(MAC_HEADER)
        if key_id is None or mac is None:
            raise SignatureError("unsigned (signing is on: every record must be signed)")
        name = bytes(key_id).decode(errors="replace")
        if not hmac.compare_digest(bytes(mac), _mac(self._key(name), value)):
            raise SignatureError(f"signature does not match key {name!r}")


def split_seal(blob: bytes) -> tuple[str | None, bytes, bytes]:
    """(key id, MAC, signed bytes) of a sealed blob; (None, b"", blob) of an unsealed one."""
    if not blob.startswith(SEAL_MAGIC):
        return None, b"", blob
    at = len(SEAL_MAGIC)
    if len(blob) < at + 1:
        raise SignatureError("truncated seal")
    size = blob[at]
    end = at + 1 + size + MAC_BYTES
    if len(blob) < end:
        raise SignatureError("truncated seal")
    key_id = blob[at + 1 : at + 1 + size].decode(errors="replace")
    return key_id, blob[at + 1 + size : end], blob[end:]


def open_bundle(blob: bytes, keyring: Keyring | None) -> bytes:
    """The bundle bytes inside what Redis holds: verified when there are keys, else the seal
    (if any) set aside. SignatureError when keys are set and the blob fails them."""
    if keyring is None:
        return split_seal(bytes(blob))[2]
    return keyring.unseal(bytes(blob))


@dataclass(frozen=True)
class SigningSettings:
    """Config fields of a service that signs or checks bundles or records (a mixin)."""

    signing_keys: str | None = setting(
        None,
        "directory of HMAC keys, one file per key id (a mounted Secret); set: sign what this "
        "service writes and refuse what is unsigned or wrongly signed (unset: signing off)",
    )
    signing_key_id: str | None = setting(
        None, "id of the key that signs (default: the only key in signing_keys)"
    )

    def signing_summary(self) -> str:
        """For the start-up log line: whether it signs and checks, with which key id."""
        ring = self.keyring()
        if ring is None:
            return "signing off"
        return f"signing with key {ring.signing_id} ({len(ring.keys)} verify)"

    def check_signing(self) -> None:
        """For `__post_init__`: unreadable or missing keys fail at start, naming the field."""
        self.keyring()

    def keyring(self) -> Keyring | None:
        """The loaded keys (ConfigError naming the field when unusable); None: signing off.
        An empty value (an empty environment variable) is unset, never the current directory."""
        directory, key_id = self.signing_keys or None, self.signing_key_id or None
        if directory is None:
            if key_id is not None:
                raise ConfigError("signing_key_id: set signing_keys too (the key directory)")
            return None
        return Keyring.load(directory, key_id)
