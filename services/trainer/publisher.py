"""The trainer's Redis side: read the current bundle, publish a better one, ride out outages.

Redis is the source of truth for what the cache service serves (`gati.store`). The trainer
reads the current bundle before every round (someone may have published or rolled back by
hand) and keeps the last one it read, so that a Redis outage delays publishing but does not
stop learning. A bundle fitted to another build of the model (fingerprint mismatch), one
that fails its checks, or (with keys: `gati.signing`) one unsigned or wrongly signed counts as
no bundle: the trainer neither warm-starts from it nor compares against it. With keys, what
the trainer publishes is signed with its signing key.
"""

from __future__ import annotations

import logging

from redis.exceptions import RedisError

from gati.probes.serving.bundle import Bundle, BundleError
from gati.signing import SignatureError
from gati.store import BundleStore
from services.trainer.metrics import TrainerMetrics

log = logging.getLogger(__name__)


class Publisher:
    def __init__(
        self, store: BundleStore, model: str, fingerprint: str, metrics: TrainerMetrics
    ) -> None:
        self.store = store  # its keyring signs and checks (None: unsigned); closed with us
        self.model = model
        self.fingerprint = fingerprint
        self.metrics = metrics
        self._current: Bundle | None = None
        self._version: int | None = None
        self._refused: int | None = None  # version already logged as unusable
        self.reachable = True

    def current(self) -> Bundle | None:
        """The bundle Redis points at now (the last one read while Redis is unreachable)."""
        try:
            found = self.store.current(self.model)
        except RedisError as exc:
            self._unreachable(exc)
            return self._current
        self._reachable()
        if found is None:
            self._current, self._version = None, None
            return None
        version, data = found
        if version == self._version:
            return self._current
        try:
            data = self.store.bundle_bytes(data)  # SignatureError: not ours, as if corrupt
            bundle = Bundle.from_bytes(data, expected_fingerprint=self.fingerprint)
        except (BundleError, SignatureError) as exc:
            if self._refused != version:
                log.warning("current bundle v%d of %s is unusable: %s", version, self.model, exc)
                self._refused = version
            self._current, self._version = None, version
            return None
        self._current, self._version = bundle, version
        self.metrics.version.set(version)
        return bundle

    @property
    def current_version(self) -> int | None:
        return self._version

    def publish(self, bundle: Bundle) -> int | None:
        """Publish as the next version; None (counted, logged) when Redis is unreachable."""
        try:
            version = self.store.publish(bundle, self.model)
        except RedisError as exc:
            self._unreachable(exc)
            return None
        self._reachable()
        self._current, self._version = bundle.with_version(version), version
        self.metrics.published.inc()
        self.metrics.version.set(version)
        return version

    def _unreachable(self, exc: BaseException) -> None:
        self.metrics.redis_errors.inc()
        if self.reachable:
            log.warning("Redis %s unreachable (%s): retrying", self.store.shown_url, exc)
        self.reachable = False

    def _reachable(self) -> None:
        if not self.reachable:
            log.warning("Redis %s reachable again", self.store.shown_url)
        self.reachable = True

    def close(self) -> None:
        self.store.close()
