"""Redis bundle store: versioned probe bundles, a pointer to the current one, announcements.

Redis is the source of truth for which bundle a model uses. Per model (key names in
`gati.names`):
    bundle_key(model, v)      the bundle bytes of version v (written once, never changed)
    bundle_versions_key(m)    sorted set of published versions (score = version)
    bundle_pointer_key(m)     the version in use; publish and rollback both move it
    bundle_counter_key(m)     INCR counter that hands out version numbers
    BUNDLE_MODELS_KEY         set of models with at least one published bundle
and every move of a pointer is announced on BUNDLE_CHANNEL as JSON {"model", "version"}.
Pub/sub is at-most-once, so readers also poll the pointer (see services/cache/refresher.py).

With a keyring (`gati.signing`), `publish` stores the bundle bytes sealed (signed by the
keyring's signing key); `fetch` and `current` return the stored bytes as they are, and
`bundle_bytes` turns them into bundle bytes, refusing (SignatureError) an unsigned or wrongly
signed one. Without a keyring nothing is sealed and a seal found is set aside unchecked.

The model name in Redis is authoritative: a bundle is published under the name the inference
service serves, which defaults to the manifest's model id. So that a misnamed bundle or one
fitted to other weights is refused at publish instead of silently never used, cache services
also record what is served:
    SERVED_KEY                sorted set of "<model> <fingerprint>" the inference services
                              asked plans for, score = Redis time of the last report; members
                              older than SERVED_TTL_S no longer count (see `served`)
Used by the CLI, the cache service and the trainer; it never imports a service.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from typing import Any

import redis

from gati import names
from gati.config import redacted, require, setting
from gati.errors import InvalidArgument, NotFound
from gati.probes.serving.bundle import Bundle, BundleError
from gati.signing import Keyring, open_bundle

# Allocate the next version: INCR, but never at or below a version already published (the
# counter may have been lost while the versions survived, e.g. a partial restore).
_NEXT_VERSION = """
local v = redis.call('INCR', KEYS[1])
local top = redis.call('ZREVRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if top[2] ~= nil and tonumber(top[2]) >= v then
  v = tonumber(top[2]) + 1
  redis.call('SET', KEYS[1], v)
end
return v
"""

# Commit one published version: bytes, versions set, models set; move the pointer only
# forward (a slower concurrent publisher must not undo a newer one), then announce.
_COMMIT = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX') == false then
  return redis.error_reply('bundle key exists: versions are written once')
end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[2])
redis.call('SADD', KEYS[4], ARGV[3])
redis.call('SET', KEYS[5], ARGV[6], 'NX')
-- Only plain decimal digits are a version, as the cache service reads them: tonumber alone
-- would take 'nan', '1e9' or '0x10', which no reader can use, and never move past them.
local raw = redis.call('GET', KEYS[3]) or '0'
local cur = string.match(raw, '^%d+$') and tonumber(raw) or 0  -- garbage: replaced
if tonumber(ARGV[2]) > cur then
  redis.call('SET', KEYS[3], ARGV[2])
  redis.call('PUBLISH', ARGV[4], ARGV[5])
end
return cur
"""


# Served models: a member is "<model> <fingerprint>" (a model name has no whitespace, see
# `_check_model_name`). Reports more than SERVED_TTL_S old are dropped, and the whole key
# expires when no cache service has reported for that long.
SERVED_KEY = "gati:served"
SERVED_TTL_S = 300.0
_REPORT_SERVED = """
local now = tonumber(redis.call('TIME')[1])
local ttl = tonumber(ARGV[1])
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], now, ARGV[i])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - ttl))
redis.call('EXPIRE', KEYS[1], math.ceil(ttl))
return now
"""


class StoreError(NotFound):
    """A version or model the caller named is not in Redis; the message lists what is."""


@dataclass(frozen=True)
class Announcement:
    """A pointer moved: `model` now uses bundle `version`."""

    model: str
    version: int

    def to_json(self) -> str:
        return json.dumps({"model": self.model, "version": self.version})

    @classmethod
    def parse(cls, data: bytes | str) -> Announcement | None:
        """None for anything that is not a well-formed announcement (never raises)."""
        try:
            obj = json.loads(data)
            model, version = obj["model"], obj["version"]
        except (ValueError, TypeError, KeyError, RecursionError):  # "[" * 50000 recurses
            return None
        if not isinstance(model, str) or not isinstance(version, int) or isinstance(version, bool):
            return None
        return cls(model, version)


@dataclass(frozen=True)
class RedisSettings:
    """Config fields of a service's Redis connection (a mixin). TLS is the URL's scheme
    (rediss://); the password is a secret: environment or config file, never a flag."""

    redis_url: str = setting(
        "redis://127.0.0.1:6379/0", "Redis holding the probe bundles (rediss://host:port: TLS)"
    )
    redis_username: str | None = setting(None, "Redis ACL user (unset: the default user)")
    redis_password: str | None = setting(None, "Redis AUTH password (or in redis_url)", secret=True)
    redis_tls_ca: str | None = setting(
        None, "PEM CA that verifies a rediss:// server (unset: the system's CAs)"
    )
    redis_tls_cert: str | None = setting(
        None, "PEM client certificate for a rediss:// server that asks for one"
    )
    redis_tls_key: str | None = setting(None, "PEM private key of redis_tls_cert")

    def check_redis(self) -> None:
        """For `__post_init__`: TLS files only with rediss://, where they would be used."""
        tls_files = ("redis_tls_ca", "redis_tls_cert", "redis_tls_key")
        for name in tls_files:
            path = getattr(self, name)
            require(
                path is None or self.redis_url.startswith("rediss://"),
                name,
                f"given, but the Redis URL {redacted(self.redis_url)} is not rediss:// "
                "(TLS is the URL's scheme)",
            )
            require(
                path is None or os.access(path, os.R_OK), name, f"{path} is not a readable file"
            )
        require(
            (self.redis_tls_cert is None) == (self.redis_tls_key is None),
            "redis_tls_cert",
            "redis_tls_cert and redis_tls_key go together",
        )

    def redis_options(self) -> dict[str, Any]:
        """Keyword arguments of `connect` and `BundleStore` beside the URL."""
        options: dict[str, Any] = {"password": self.redis_password}
        if self.redis_username is not None:
            options["username"] = self.redis_username
        tls = {
            "ssl_ca_certs": self.redis_tls_ca,
            "ssl_certfile": self.redis_tls_cert,
            "ssl_keyfile": self.redis_tls_key,
        }
        options.update({k: v for k, v in tls.items() if v is not None})
        return options


def connect(
    redis_url: str, password: str | None = None, timeout_s: float = 2.0, **kwargs: Any
) -> redis.Redis:
    """A client with bounded socket timeouts, so a dead Redis never hangs a caller for long."""
    options: dict[str, Any] = {
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        "health_check_interval": 10,
        **kwargs,
    }
    if password is not None:  # passing None would erase a password given in the URL
        options["password"] = password
    return redis.Redis.from_url(redis_url, **options)


class BundleStore:
    """Publish, roll back and read probe bundles in Redis."""

    def __init__(
        self,
        redis_url: str,
        password: str | None = None,
        timeout_s: float = 2.0,
        *,
        keyring: Keyring | None = None,
        **connect_options: Any,
    ):
        self.shown_url = redacted(redis_url)  # for logs and messages: never its password
        self.keyring = keyring  # None: publish unsigned, read without checking
        self.client = connect(redis_url, password, timeout_s, **connect_options)
        self._next_version = self.client.register_script(_NEXT_VERSION)
        self._commit = self.client.register_script(_COMMIT)
        self._report_served = self.client.register_script(_REPORT_SERVED)

    # ---- writers ---------------------------------------------------------------------------
    def publish(self, bundle: Bundle, model: str | None = None) -> int:
        """Store `bundle` as the model's next version, point at it, announce; returns the version.

        The stored bytes carry the assigned version in their manifest (checksum resealed), so
        a reader can check that the key and the bytes agree; with a keyring they are sealed
        (signed) in front. A bundle the cache service would
        refuse as unfit (`serving.fitness`) is refused here first, with the same message,
        and nothing is written.
        """
        from gati.probes.serving.fitness import fit_to_serve  # builds the runtime: numpy, models

        model = model or bundle.model_id
        _check_model_name(model)
        bundle.verify()
        fit_to_serve(bundle)
        version = int(
            self._next_version(
                keys=[names.bundle_counter_key(model), names.bundle_versions_key(model)]
            )
        )
        data = bundle.with_version(version).to_bytes()
        if self.keyring is not None:
            data = self.keyring.seal(data)
        self._commit(
            keys=[
                names.bundle_key(model, version),
                names.bundle_versions_key(model),
                names.bundle_pointer_key(model),
                names.BUNDLE_MODELS_KEY,
                names.BUNDLE_EPOCH_KEY,
            ],
            args=[
                data,
                version,
                model,
                names.BUNDLE_CHANNEL,
                Announcement(model, version).to_json(),
                uuid.uuid4().hex,
            ],
        )
        return version

    def rollback(self, model: str, version: int) -> None:
        """Point `model` at an earlier (or any published) version and announce it."""
        available = self.versions(model)
        if version not in available or not self.client.exists(names.bundle_key(model, version)):
            shown = ", ".join(map(str, available)) or "none"
            raise StoreError(
                f"model {model!r} has no bundle version {version} in Redis "
                f"(published versions: {shown})"
            )
        pipe = self.client.pipeline(transaction=True)
        pipe.set(names.bundle_pointer_key(model), version)
        pipe.publish(names.BUNDLE_CHANNEL, Announcement(model, version).to_json())
        pipe.execute()

    # ---- readers ---------------------------------------------------------------------------
    def epoch(self) -> str | None:
        """The token of this Redis's bundle history (changes when Redis lost its data)."""
        raw = self.client.get(names.BUNDLE_EPOCH_KEY)
        return None if raw is None else raw.decode() if isinstance(raw, bytes) else str(raw)

    def pointer(self, model: str) -> int | None:
        """The version the model uses now (one GET), or None if none was ever published.
        BundleError when the key holds something that is not a version number."""
        raw = self.client.get(names.bundle_pointer_key(model))
        if raw is None:
            return None
        try:
            return int(raw)
        except ValueError:
            raise BundleError(f"pointer of {model!r} is {raw[:40]!r}, not a version") from None

    def fetch(self, model: str, version: int) -> bytes | None:
        """The stored bytes of one version (sealed when signed), unverified, or None: the
        reader opens them with `bundle_bytes`, then verifies the bundle."""
        return self.client.get(names.bundle_key(model, version))

    def current(self, model: str) -> tuple[int, bytes] | None:
        """(version, stored bytes) the pointer names, or None when there is no usable
        pointer; the bytes as `fetch` returns them (open them with `bundle_bytes`)."""
        version = self.pointer(model)
        if version is None:
            return None
        data = self.fetch(model, version)
        return None if data is None else (version, data)

    def bundle_bytes(self, stored: bytes) -> bytes:
        """The bundle bytes (`Bundle.from_bytes`) inside stored bytes (`fetch`, `current`):
        with a keyring, SignatureError unless signed by one of its keys; without, a seal (if
        any) is set aside unchecked. Reads nothing from Redis."""
        return open_bundle(stored, self.keyring)

    def versions(self, model: str) -> list[int]:
        """Every published version of `model`, ascending."""
        return sorted(int(v) for v in self.client.zrange(names.bundle_versions_key(model), 0, -1))

    def models(self) -> list[str]:
        """Every model with a published bundle, sorted."""
        return sorted(m.decode() for m in self.client.smembers(names.BUNDLE_MODELS_KEY))

    # ---- served models (what inference services serve; see SERVED_KEY) ---------------
    def report_served(self, pairs: list[tuple[str, str]], ttl_s: float = SERVED_TTL_S) -> None:
        """Record that (model, fingerprint) pairs are served now (the cache service, for the
        plan requests it answered); Redis's clock stamps them, so hosts' clocks never matter."""
        if pairs:
            members = [f"{model} {fingerprint}" for model, fingerprint in pairs]
            self._report_served(keys=[SERVED_KEY], args=[ttl_s, *members])

    def served(self, ttl_s: float = SERVED_TTL_S) -> dict[str, list[str]]:
        """model -> fingerprints served under that name, as reported within `ttl_s`; empty
        when no cache service has reported (none runs, or no inference service asked yet)."""
        now, _ = self.client.time()
        served: dict[str, list[str]] = {}
        for raw in self.client.zrangebyscore(SERVED_KEY, now - ttl_s, "+inf"):
            model, _, fingerprint = raw.decode(errors="replace").partition(" ")
            if model and fingerprint:
                served.setdefault(model, []).append(fingerprint)
        return {m: sorted(f) for m, f in sorted(served.items())}

    def subscribe(self) -> redis.client.PubSub:
        """A pub/sub connection subscribed to announcements (see `Announcement.parse`)."""
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(names.BUNDLE_CHANNEL)
        return pubsub

    def close(self) -> None:
        self.client.close()


def usable_model_name(model: str) -> bool:
    """Key names embed the model: a ':' or whitespace would make them ambiguous."""
    return bool(model) and not any(c in model for c in ": \t\n\r")


def _check_model_name(model: str) -> None:
    if not usable_model_name(model):
        raise InvalidArgument(
            f"model name {model!r} is not usable in Redis keys: it must be non-empty "
            "without ':' or whitespace"
        )


def served_mismatch(served: dict[str, list[str]], model: str, fingerprint: str) -> str | None:
    """Why a bundle fitted to `fingerprint` published as `model` would not be used by any
    inference service in `served` (from `BundleStore.served`), or None when one serves that
    name with those weights, or when nothing is recorded at all (there is nothing to check
    against: a first stack, or cache services older than this check)."""
    if not served or fingerprint in served.get(model, ()):
        return None
    same_weights = sorted(m for m, fps in served.items() if fingerprint in fps)
    hint = (
        f"; the model with those weights is served as {', '.join(map(repr, same_weights))}: "
        f"publish under that name with --model"
        if same_weights
        else "; refit the probes on the served weights"
    )
    if model in served:
        theirs = ", ".join(f[:12] for f in served[model])
        return (
            f"the bundle was fitted to model fingerprint {fingerprint[:12]}, but {model!r} is "
            f"served with fingerprint {theirs}{hint}"
        )
    listed = ", ".join(f"{m} ({', '.join(f[:12] for f in fps)})" for m, fps in served.items())
    return f"no inference service serves a model named {model!r} (served: {listed}){hint}"
