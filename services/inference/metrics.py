"""Prometheus metrics of the inference service (its own registry)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.common.liveness import Liveness
from services.common.metrics import LATENCY_BUCKETS

# Fine below 2 ms, where a lookup's round trip lives (gati bench latency reads its p50 here).
LOOKUP_RTT_BUCKETS = (*(round(i * 1e-4, 4) for i in range(1, 21)), 0.003, 0.005, 0.01, 0.025, 0.1)
# A lookup's cost on the model's thread lives in tens of microseconds.
LOOKUP_COST_BUCKETS = tuple(round(i * 1e-5, 5) for i in (1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 50, 100))
STAGE_BUCKETS = tuple(float(i) for i in range(11))


class InferenceMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "gati_inference_requests", "inference requests received", ["model"], registry=r
        )
        self.failures = Counter(
            "gati_inference_failures",
            "requests answered with an error",
            ["model", "code"],
            registry=r,
        )
        self.latency = Histogram(
            "gati_inference_request_latency_seconds",
            "time to answer a request",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.rows = Counter("gati_inference_rows", "batch rows served", ["model"], registry=r)
        self.exits = Counter(
            "gati_inference_exits",
            "rows answered at each exit ('full': the whole model)",
            ["model", "layer"],
            registry=r,
        )
        self.exact_hits = Counter(
            "gati_exact_cache_hits",
            "rows answered by the exact-match cache",
            ["model"],
            registry=r,
        )
        self.exact_misses = Counter(
            "gati_exact_cache_misses", "rows not in the exact-match cache", ["model"], registry=r
        )
        self.exact_entries = Gauge(
            "gati_exact_cache_entries", "entries in the exact-match cache", registry=r
        )
        self.lookups = Counter(
            "gati_cache_lookups_sent",
            "lookups sent to the cache service",
            ["model", "layer"],
            registry=r,
        )
        self.lookup_rtt = Histogram(
            "gati_cache_lookup_rtt_seconds",
            "send to reply of lookups answered while their request still ran",
            buckets=LOOKUP_RTT_BUCKETS,
            registry=r,
        )
        self.lookup_cost = Histogram(
            "gati_cache_lookup_cost_seconds",
            "time the model's thread spent on one lookup: handing it over, polling and "
            "applying its reply (its critical-path cost)",
            ["model"],
            buckets=LOOKUP_COST_BUCKETS,
            registry=r,
        )
        self.lookup_reply_stages = Histogram(
            "gati_cache_lookup_reply_stages",
            "stages the model computed between a lookup and the first look at its reply",
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.lookups_dropped = Counter(
            "gati_cache_lookups_dropped",
            "lookups not handed to the relay (backlog: shared memory full; relay: pipe full "
            "or relay gone; rows: batch wider than a frame)",
            ["reason"],
            registry=r,
        )
        self.labels_sent = Counter(
            "gati_cache_labels_sent",
            "label messages handed to the relay: the base model's labels for rows of a "
            "request that sent lookups (the cache service files their activations under them)",
            ["model"],
            registry=r,
        )
        self.labels_dropped = Counter(
            "gati_cache_labels_dropped",
            "label messages not handed to the relay (down: lookup stream down; relay: pipe "
            "full or relay gone)",
            ["reason"],
            registry=r,
        )
        self.relay_restarts = Counter(
            "gati_cache_relay_restarts",
            "lookup relay processes started again after exiting",
            registry=r,
        )
        self.payoff_disabled = Gauge(
            "gati_payoff_disabled_layers",
            "layers switched off because their lookups cost more than their hits saved",
            ["model"],
            registry=r,
        )
        self.payoff_switched_off = Counter(
            "gati_payoff_switched_off",
            "times a layer was switched off for not paying for its lookups",
            ["model", "layer"],
            registry=r,
        )
        self.layer_net_ms = Gauge(
            "gati_layer_net_ms_per_lookup",
            "per lookup at a layer, over its last evaluation window: compute its hits saved "
            "minus what its lookups cost, in ms",
            ["model", "layer"],
            registry=r,
        )
        self.lookup_unanswered = Counter(
            "gati_cache_lookups_unanswered",
            "lookups whose reply came too late or never (the model went on)",
            ["model"],
            registry=r,
        )
        self.cache_unavailable = Counter(
            "gati_cache_unavailable",
            "requests served by the full model because the cache service was unreachable",
            ["model"],
            registry=r,
        )
        self.cache_reconnects = Counter(
            "gati_cache_reconnects", "lookup stream (re)connections", registry=r
        )
        self.plan_version = Gauge(
            "gati_cache_plan_bundle_version",
            "bundle version of the plan in use",
            ["model"],
            registry=r,
        )
        self.plans_refused = Counter(
            "gati_cache_plans_refused",
            "plans refused (fingerprint or layer mismatch)",
            ["model", "reason"],
            registry=r,
        )
        self.shadow_runs = Counter(
            "gati_shadow_completions",
            "hits whose full model ran in the background",
            ["model"],
            registry=r,
        )
        self.shadow_skipped = Counter(
            "gati_shadow_skipped",
            "sampled hits not completed because shadow work was at its cap",
            ["model"],
            registry=r,
        )
        self.live_agreement = Counter(
            "gati_live_agreement",
            "shadow-completed hits by whether the served answer equals the base model's",
            ["model", "layer", "agree"],
            registry=r,
        )
        self.guard_disabled = Gauge(
            "gati_guard_disabled_layers",
            "layers switched off by the live agreement guard",
            ["model"],
            registry=r,
        )
        self.records_sent = Counter(
            "gati_records_sent", "activation records delivered to Kafka", registry=r
        )
        self.records_dropped = Counter(
            "gati_records_dropped",
            "activation records dropped (never delivered)",
            ["reason"],
            registry=r,
        )
        # recorder, shadow, cache-plan, cache-relay: alive, and errors their loops went on from
        self.threads = Liveness(r)
        # --- a served model the cache service has no bundle for (see cache_client) ---
        self.bundle_missing = Gauge(
            "gati_inference_bundle_missing",
            "1 while the cache service answers it has no bundle for this served model name "
            "(no caches; likely a bundle published under another name), 0 once it has one",
            ["model"],
            registry=r,
        )
        self.cache_holds = Gauge(
            "gati_inference_cache_holds",
            "1 for each name the cache service holds a bundle for, as it said when it had "
            "none for `model` (set only while gati_inference_bundle_missing is 1)",
            ["model", "held"],
            registry=r,
        )
