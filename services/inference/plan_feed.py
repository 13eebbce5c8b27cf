"""Each served model's plan, fetched from the cache service off the request path.

Plans come from unary GetPlan calls on this process's own channel, once every
`refresh_seconds` and at once when woken (a reply named another bundle version, or the relay
reconnected). Each states the model's weights fingerprint (the cache service records what is
served, for `gati probes publish` to check bundles against). A NOT_FOUND names the models the
cache service does hold: a model served under a name no bundle is published as is logged
(once, and again when what is held changes) and exported (`gati_inference_bundle_missing`),
since it would otherwise just never hit.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable

import grpc
from google.protobuf.message import DecodeError

from gati import names
from gati.api import cache_pb2, cache_pb2_grpc
from gati.models import StagedModel
from services.common.tls import ClientTls, channel
from services.inference.metrics import InferenceMetrics
from services.inference.plan import ActivePlan, check_plan

log = logging.getLogger(__name__)


class PlanFeed:
    """`latest`: model -> its latest plan (None: none), kept fresh by the "cache-plan" thread
    while `connected()` says the cache service can be reached."""

    def __init__(
        self,
        address: str,
        models: dict[str, StagedModel],
        metrics: InferenceMetrics,
        connected: Callable[[], bool],
        refresh_seconds: float = 1.0,
        max_message_bytes: int = 64 * 1024 * 1024,
        tls: ClientTls | None = None,
    ) -> None:
        self.address = address
        self.latest: dict[str, ActivePlan | None] = dict.fromkeys(models)
        self._models = models
        self._metrics = metrics
        self._connected = connected
        self._refresh = refresh_seconds
        # model -> the names the cache service held when it had no bundle for it (None: it
        # did not say); absent while it has one, or before it was first asked
        self._missing: dict[str, tuple[str, ...] | None] = {}
        self._channels: dict[str, dict[str, int]] = {}  # model -> cut -> channels
        self._channel = channel(
            address,
            tls,
            options=[
                ("grpc.max_send_message_length", max_message_bytes),
                ("grpc.max_receive_message_length", max_message_bytes),
            ],
        )
        self._stub = cache_pb2_grpc.CacheServiceStub(self._channel)
        self._closed = threading.Event()
        self._wakeup = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cache-plan", daemon=True)
        self._thread.start()
        metrics.threads.watch(self._thread.name, self._thread)  # health NOT_SERVING if it ends

    def wake(self) -> None:
        """Fetch the plans now, not at the next tick."""
        self._wakeup.set()

    def _loop(self) -> None:
        while not self._closed.is_set():
            self._wakeup.wait(self._refresh)
            self._wakeup.clear()
            if self._closed.is_set() or not self._connected():
                continue
            try:
                self.refresh()
            except Exception:  # a reply we cannot read: keep the plans held, ask again
                self._metrics.threads.error("cache-plan")
                log.exception("plan refresh failed; keeping the plans held, trying again")

    def refresh(self) -> None:
        """Re-read every model's plan now (the loop, on its timer or when woken)."""
        for name in self._models:
            self._refresh_plan(name)

    def _refresh_plan(self, name: str) -> None:
        request = cache_pb2.PlanRequest(
            model=name, model_fingerprint=self._models[name].fingerprint()
        )
        try:
            reply = self._stub.GetPlan(request, timeout=2.0)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                self._note_missing(name, held_models(exc))
                self._set_plan(name, None)
            return
        self._note_found(name)
        self._set_plan(name, self._validate(name, reply))

    def _note_missing(self, name: str, held: tuple[str, ...] | None) -> None:
        """The cache service has no bundle for `name`: say so once (and again when what it
        holds changes), with the names it does hold, since the likeliest cause is a bundle
        published under another name than the one served here."""
        if name in self._missing and self._missing[name] == held:
            return
        self._forget_held(name)
        self._missing[name] = held
        self._metrics.bundle_missing.labels(name).set(1)
        for other in held or ():
            self._metrics.cache_holds.labels(name, other).set(1)
        if held is None:
            holds = "it did not say which models it holds"
        else:
            holds = f"it holds bundles for: {', '.join(held) or 'none'}"
        log.warning(
            "model %s: the cache service at %s has no bundle for this name (%s); serving the "
            "full model. Publish a bundle under this name (gati probes publish --model %s) or "
            "serve the model under the name its bundle is published as",
            name,
            self.address,
            holds,
            name,
        )

    def _note_found(self, name: str) -> None:
        if name in self._missing:
            log.info("model %s: the cache service now has a bundle for this name", name)
            self._forget_held(name)
            del self._missing[name]
            self._metrics.bundle_missing.labels(name).set(0)

    def _forget_held(self, name: str) -> None:
        """Drop the held-names series last exported for `name` (what is held changed)."""
        for other in self._missing.get(name) or ():
            with contextlib.suppress(KeyError):
                self._metrics.cache_holds.remove(name, other)

    def missing(self) -> dict[str, tuple[str, ...] | None]:
        """model -> names the cache service held when it had no bundle for it (None: not
        said), for every served model it last answered NOT_FOUND for."""
        return dict(self._missing)

    def _validate(self, name: str, plan: cache_pb2.Plan) -> ActivePlan | None:
        model = self._models[name]
        channels = self._channels.get(name)
        if channels is None:  # one forward pass, the first time a plan comes
            channels = self._channels[name] = {c: s[0] for c, s in model.cut_shapes().items()}
        active, refusal = check_plan(name, model, channels, plan)
        if refusal is not None:
            reason, message = refusal
            self._metrics.plans_refused.labels(name, reason).inc()
            log.error("refusing plan for %s: %s", name, message)
        return active

    def _set_plan(self, name: str, plan: ActivePlan | None) -> None:
        old = self.latest.get(name)
        if (old and old.version) != (plan and plan.version):
            log.info("model %s: plan %s -> %s", name, old and old.version, plan and plan.version)
        self.latest[name] = plan
        self._metrics.plan_version.labels(name).set(plan.version if plan else 0)

    def close(self) -> None:
        self._closed.set()
        self._wakeup.set()
        self._thread.join(timeout=2)
        self._channel.close()


def held_models(exc: grpc.RpcError) -> tuple[str, ...] | None:
    """The models a NOT_FOUND GetPlan says the cache service holds; None when it did not
    say (a cache service older than PlanNotFound) or said it in a form we cannot read."""
    trailing = getattr(exc, "trailing_metadata", None)
    for key, value in (trailing() if callable(trailing) else None) or ():
        if key == names.PLAN_NOT_FOUND_KEY and isinstance(value, bytes):
            try:
                return tuple(cache_pb2.PlanNotFound.FromString(value).held_models)
            except DecodeError:  # never let a bad trailer stop the plan loop
                return None
    return None
