"""Keep the probes in use in step with Redis, the source of truth for bundles.

A sync reads each model's pointer (one GET) and, when it names a version other than the one in
use, fetches the bytes, verifies them (signature when the store has keys, gati.signing;
format, checksum, version, fitness in gati.probes.serving.fitness, probes build) and swaps the
new runtime in. Syncs run in one
thread, on:
- start (`sync_once`, before the service says SERVING),
- a pub/sub announcement (a second thread listens; it also wakes a sync each time it
  (re)subscribes, which is the "load on reconnect"),
- a timer (`refresh_s`), because pub/sub is at-most-once.
A rollback needs nothing special: the pointer moved, so the runtime follows it, down or up.

A sync also writes which models the inference services asked plans for, with which
fingerprint (`services.cache.served`), so `gati probes publish` can check a bundle against
what is served; a pair seen for the first time wakes a sync, so it lands within milliseconds.

A bundle that fails verification is refused (metric + log) and the last good one stays; the
refused version is not fetched again until the pointer moves. A service that holds nothing yet
(it just started) behind a refused pointer falls back to the newest version below the pointer
that verifies, which is what the replicas that were up all along kept serving. If Redis is
unreachable the service keeps serving what it has and both threads retry with exponential
backoff; once no sync has read Redis for `max_sync_age_seconds` (`stale_reasons`), readiness
says NOT_SERVING until one does.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import redis

from gati.probes.serving.bundle import (
    Bundle,
    BundleError,
    ChecksumError,
    LayerError,
    VersionError,
)
from gati.probes.serving.fitness import FitnessError, fit_to_serve
from gati.probes.serving.runtime import ProbeRuntime
from gati.signing import SignatureError
from gati.store import SERVED_TTL_S, Announcement, BundleStore
from services.cache.metrics import CacheMetrics
from services.cache.probe_store import ProbeStore
from services.cache.served import ServedModels
from services.common.backoff import Backoff

if TYPE_CHECKING:
    from services.common.liveness import HealthHandle

log = logging.getLogger(__name__)

REDIS_ERRORS = (redis.RedisError, OSError)
FALLBACK_TRIES = 5  # older versions tried when the pointer's is bad and none is held
POLL_S = 0.25  # how long the listener blocks on pub/sub; bounds how long close() takes


# Why a bundle was refused, by the error's type, most specific first (metric labels).
# "signature": unsigned or wrongly signed while the service has keys (like a corrupt one).
REFUSALS: tuple[tuple[type[Exception], str], ...] = (
    (SignatureError, "signature"),
    (FitnessError, "fitness"),
    (ChecksumError, "checksum"),
    (VersionError, "version"),
    (LayerError, "probes"),
    (BundleError, "format"),
)


def refusal_reason(exc: Exception) -> str:
    """A short, fixed label for why a bundle was refused (metric label, not free text)."""
    return next((label for kind, label in REFUSALS if isinstance(exc, kind)), "invalid")


class BundleRefresher:
    def __init__(
        self,
        store: BundleStore,
        probes: ProbeStore,
        metrics: CacheMetrics,
        *,
        models: Sequence[str] = (),
        refresh_s: float = 2.0,
        backoff_first_s: float = 0.1,
        backoff_max_s: float = 5.0,
    ) -> None:
        self.store = store
        self.probes = probes
        self.metrics = metrics
        self.models = tuple(models)  # empty: every model Redis has a bundle for
        self.refresh_s = refresh_s
        # rewritten well within the TTL, so a pair still asked for never lapses in Redis
        self.served = ServedModels(rewrite_s=SERVED_TTL_S / 5, forget_s=SERVED_TTL_S)
        self._backoff = (backoff_first_s, backoff_max_s)
        # model -> (epoch, version) refused while the pointer stays
        self._refused: dict[str, tuple[str | None, int]] = {}
        # model -> epoch of Redis's bundle history when its runtime was installed
        self._epochs: dict[str, str | None] = {}
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._sync_lock = threading.Lock()
        self._redis_ok = True
        self._broken: dict[str, str] = {}  # model -> what stopped its last sync (logged once)
        # monotonic time of the last sync that read Redis (creation, before the first)
        self._synced_at = time.monotonic()
        metrics.sync_age.set_function(self.sync_age)
        self._threads = [
            threading.Thread(target=self._sync_loop, name="bundle-sync", daemon=True),
            threading.Thread(target=self._listen_loop, name="bundle-listen", daemon=True),
        ]

    # ---- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        for t in self._threads:
            t.start()
            self.metrics.threads.watch(t.name, t)  # health turns NOT_SERVING if one ends

    def guard_health(self, handle: HealthHandle, max_age_s: float) -> None:
        """Readiness NOT_SERVING while the last sync that read Redis is older than
        `max_age_s` (0: never), SERVING again after the next one succeeds: `handle.unready`
        lists the reason, and the service's liveness watcher applies it when it changes."""
        if max_age_s > 0:
            previous = handle.unready
            handle.unready = lambda: [*previous(), *stale_reasons(self.sync_age(), max_age_s)]

    def close(self) -> None:
        self._closed.set()
        self._wake.set()
        for t in self._threads:
            if t.is_alive():
                t.join(timeout=5)

    def wake(self) -> None:
        """Sync soon (an announcement arrived or a connection came back)."""
        self._wake.set()

    def note_served(self, model: str, fingerprint: str) -> None:
        """A plan request for `model` from a service serving weights `fingerprint` (called
        on the server's event loop: no Redis here; a new pair wakes a sync to write it)."""
        if self.served.note(model, fingerprint):
            self.wake()

    # ---- one sync -----------------------------------------------------------------------
    def sync_once(self) -> bool:
        """Follow every tracked model's pointer once; False if Redis could not be read."""
        with self._sync_lock:
            try:
                for model in self.models or self.store.models():
                    self._sync_model_safely(model)
                due = self.served.due()
                self.store.report_served(due, SERVED_TTL_S)
                self.served.written(due)
            except REDIS_ERRORS as exc:
                self.metrics.redis_errors.inc()
                if self._redis_ok:
                    log.warning("redis unreachable (%s); serving the bundles held", exc)
                self._redis_ok = False
                return False
            if not self._redis_ok:
                log.info("redis reachable again")
            self._redis_ok = True
            self._synced_at = time.monotonic()
            return True

    def sync_age(self) -> float:
        """Seconds since a sync last read Redis (since creation, before the first): how stale
        the bundles held may be, as a rollback or a new publish would not have been seen."""
        return time.monotonic() - self._synced_at

    def _sync_model_safely(self, model: str) -> None:
        """`_sync_model`, where anything but Redis being down is one refusal, counted and
        logged once per distinct problem: the thread goes on and the last good bundle stays."""
        try:
            self._sync_model(model)
        except REDIS_ERRORS:
            raise
        except Exception as exc:
            if self._broken.get(model) != str(exc):  # counted once, not at every sync
                self._broken[model] = str(exc)
                reason = "pointer" if isinstance(exc, BundleError) else "internal"
                self._refuse(model, self.probes.version(model), reason, str(exc))
            return
        self._broken.pop(model, None)

    def _sync_model(self, model: str) -> None:
        version = self.store.pointer(model)
        if version is None:
            return  # nothing published
        # A version number names a bundle only within one history of Redis: after Redis lost
        # its data, numbering starts again under a new epoch token.
        epoch = self.store.epoch()
        held = self.probes.version(model)
        if version == held and epoch == self._epochs.get(model):
            return  # already in use
        if self._refused.get(model) == (epoch, version):
            return  # refused already; wait for the pointer to move
        runtime = self._load(model, version)
        if runtime is None:
            self._refused[model] = (epoch, version)
            if self.probes.get(model) is not None:
                return  # the last good bundle stays
            # Nothing held (a fresh start behind a bad pointer): serve what the replicas that
            # were up all along serve, the newest version below the pointer that verifies.
            runtime = self._fallback(model, version)
            if runtime is None:
                return
        else:
            self._refused.pop(model, None)
        old = self.probes.version(model)
        self.probes.install(model, runtime)
        self._epochs[model] = epoch
        log.info(
            "model %s: bundle v%d -> v%d (%d active layers)",
            model,
            old,
            runtime.version,
            len(runtime.layers),
        )

    def _load(self, model: str, version: int) -> ProbeRuntime | None:
        """The verified runtime of one stored version, or None (refusal counted and logged)."""
        data = self.store.fetch(model, version)
        if data is None:
            self._refuse(model, version, "missing", "the pointer names a version with no bytes")
            return None
        try:
            return load_runtime(self.store.bundle_bytes(data), version)  # signature first
        except Exception as exc:  # any failure of untrusted bytes is a refusal, never a crash
            self._refuse(model, version, refusal_reason(exc), str(exc))
            return None

    def _fallback(self, model: str, below: int) -> ProbeRuntime | None:
        tried = 0
        for version in reversed(self.store.versions(model)):
            if version >= below:
                continue
            if tried == FALLBACK_TRIES:
                break
            tried += 1
            runtime = self._load(model, version)
            if runtime is not None:
                log.warning("model %s: v%d refused, serving v%d below it", model, below, version)
                return runtime
        return None

    def _refuse(self, model: str, version: int, reason: str, message: str) -> None:
        self.metrics.refused.labels(model, reason).inc()
        log.error(
            "refused bundle v%d of model %s (%s): %s; keeping v%d",
            version,
            model,
            reason,
            message,
            self.probes.version(model),
        )

    # ---- threads ------------------------------------------------------------------------
    def _sync_loop(self) -> None:
        backoff = Backoff(*self._backoff)
        delay = self.refresh_s
        while not self._closed.is_set():
            self._wake.wait(delay)
            self._wake.clear()
            if self._closed.is_set():
                return
            try:
                ok = self.sync_once()
            except Exception:
                self.metrics.threads.error("bundle-sync")
                log.exception("bundle sync failed; trying again")
                ok = False
            if ok:
                backoff.reset()
                delay = self.refresh_s
            else:
                delay = backoff.next()

    def _listen_loop(self) -> None:
        backoff = Backoff(*self._backoff)
        while not self._closed.is_set():
            pubsub = None
            try:
                pubsub = self.store.subscribe()
                self.wake()  # (re)connected: whatever was announced meanwhile is read now
                backoff.reset()
                while not self._closed.is_set():
                    message = pubsub.get_message(timeout=POLL_S)
                    if message is not None and message.get("type") == "message":
                        try:
                            self._on_announcement(message["data"])
                        except Exception:
                            self.metrics.threads.error("bundle-listen")
                            log.exception("bundle announcement %r not handled", message)
            except REDIS_ERRORS as exc:
                self.metrics.redis_errors.inc()
                log.debug("bundle announcements lost (%s); resubscribing", exc)
                self._closed.wait(backoff.next())
            except Exception:  # anything else from the client: resubscribe, never die
                self.metrics.threads.error("bundle-listen")
                log.exception("bundle announcements failed unexpectedly; resubscribing")
                self._closed.wait(backoff.next())
            finally:
                if pubsub is not None:
                    _close_quietly(pubsub)

    def _on_announcement(self, data: bytes) -> None:
        announced = Announcement.parse(data)  # never raises, whatever was published
        if announced is None:
            log.warning("ignoring malformed bundle announcement %r", data[:200])
            return
        if not self.models or announced.model in self.models:
            self.wake()


def stale_reasons(age_s: float, max_age_s: float) -> list[str]:
    """Why readiness must be off, as a handle's `unready` lists it: [] while fresh (or when
    `max_age_s` is 0). Past the bound a rollback or a new publish may have gone unseen; only
    the service names turn NOT_SERVING: "" (liveness) stays SERVING, since a restart would not
    bring Redis back and would lose the bundles held. Lookups and plans still answer."""
    if max_age_s > 0 and age_s > max_age_s:
        return [f"no bundle sync with Redis for {age_s:.1f}s (bound {max_age_s:g}s)"]
    return []


def load_runtime(data: bytes, version: int) -> ProbeRuntime:
    """Verify untrusted bundle bytes and build their runtime (BundleError when unusable).

    Never unpickles: `Bundle.from_bytes` reads a magic header, JSON and safetensors only.
    """
    bundle = Bundle.from_bytes(data)
    if bundle.version != version:
        raise VersionError(
            f"version in the manifest is {bundle.version} but the bundle is stored as "
            f"version {version}; republish it with `gati probes publish`"
        )
    return fit_to_serve(bundle)  # intact is not enough: thresholds, widths, finite weights


def _close_quietly(pubsub: redis.client.PubSub) -> None:
    with contextlib.suppress(Exception):  # in the listener's `finally`: it must not end it
        pubsub.close()
