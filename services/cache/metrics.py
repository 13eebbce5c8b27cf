"""Prometheus metrics of the cache service (its own registry, so tests can run several).

Counting units: `lookups` counts lookup messages (one per cut per request); `hits` and
`misses` count activation rows, so for batched requests hits + misses >= lookups.
Error and refusal reasons are a small fixed vocabulary (see `LOOKUP_ERRORS` and
services/cache/refresher.py), never client text, so label cardinality stays bounded.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.common.liveness import Liveness

# A lookup is tens of microseconds of numpy; the shared request buckets start at 0.1 ms.
LOOKUP_BUCKETS = (
    0.00001,
    0.00002,
    0.00005,
    0.0001,
    0.0002,
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.05,
)
LOOKUP_ERRORS = ("model", "layer", "dtype", "shape", "nonfinite", "request_id", "internal")


@dataclass(frozen=True)
class LayerMetrics:
    """The labelled children one (model, layer) updates per lookup, resolved once: `labels()`
    costs a lock and a dict lookup each, which adds up on the lookup path."""

    lookups: Counter
    hits: Counter
    misses: Counter
    latency: Histogram


class CacheMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._layers: dict[tuple[str, str], LayerMetrics] = {}
        r = self.registry
        self.lookups = Counter(
            "gati_cache_lookups", "lookup messages evaluated", ["model", "layer"], registry=r
        )
        self.hits = Counter(
            "gati_cache_hits", "activation rows answered with a hit", ["model", "layer"], registry=r
        )
        self.misses = Counter(
            "gati_cache_misses",
            "activation rows answered with a miss",
            ["model", "layer"],
            registry=r,
        )
        self.errors = Counter(
            "gati_cache_lookup_errors",
            f"lookups answered with an error, by reason ({', '.join(LOOKUP_ERRORS)})",
            ["reason"],
            registry=r,
        )
        self.latency = Histogram(
            "gati_cache_lookup_latency_seconds",
            "time from a lookup's arrival to its answer, inside the service",
            ["model"],
            buckets=LOOKUP_BUCKETS,
            registry=r,
        )
        self.bundle_version = Gauge(
            "gati_cache_bundle_version", "bundle version in use (0: none)", ["model"], registry=r
        )
        self.reloads = Counter(
            "gati_cache_reloads", "bundles loaded and swapped in", ["model"], registry=r
        )
        self.refused = Counter(
            "gati_cache_bundles_refused",
            # signature, fitness, checksum, version, probes, format, invalid, missing,
            # pointer, internal (services/cache/refresher.py)
            "bundles refused, by reason (the last good one stays)",
            ["model", "reason"],
            registry=r,
        )
        self.streams_open = Gauge(
            "gati_cache_lookup_streams", "Lookup streams open now", registry=r
        )
        self.streams_refused = Counter(
            "gati_cache_lookup_streams_refused",
            "Lookup streams refused because max_streams were open (RESOURCE_EXHAUSTED)",
            registry=r,
        )
        self.streams_idle_closed = Counter(
            "gati_cache_lookup_streams_idle_closed",
            "Lookup streams closed after stream_idle_seconds without a message",
            registry=r,
        )
        self.redis_errors = Counter(
            "gati_cache_redis_errors", "failed Redis reads and subscriptions", registry=r
        )
        # computed at scrape time (the refresher sets the function): no thread has to tick it
        self.sync_age = Gauge(
            "gati_cache_bundle_sync_age_seconds",
            "seconds since a bundle sync last read Redis (since start, before the first)",
            registry=r,
        )
        # live memory (services/cache/live.py)
        self.live_hits = Counter(
            "gati_cache_live_hits",
            "activation rows answered from the live memory (its k nearest agreed, close enough)",
            ["model", "layer"],
            registry=r,
        )
        self.live_rows = Gauge(
            "gati_cache_live_rows",
            "rows the live memory holds that can still answer",
            ["model", "layer"],
            registry=r,
        )
        self.live_labels = Counter(
            "gati_cache_live_labels",
            "label messages: filed, or unknown (request not held: not looked up, evicted, expired)",
            ["outcome"],
            registry=r,
        )
        self.live_bytes = Gauge("gati_cache_live_bytes", "bytes the live memories hold", registry=r)
        # bundle-sync, bundle-listen: alive, and errors their loops went on from
        self.threads = Liveness(r)

    def layer(self, model: str, layer: str) -> LayerMetrics:
        """Children for one (model, layer); only called for layers some bundle made active."""
        found = self._layers.get((model, layer))
        if found is None:
            found = LayerMetrics(
                self.lookups.labels(model, layer),
                self.hits.labels(model, layer),
                self.misses.labels(model, layer),
                self.latency.labels(model),
            )
            self._layers[(model, layer)] = found
        return found

    def total(self, counter: Counter, **labels: str) -> float:
        """Sum of a counter's samples whose labels include `labels` (for the Status call)."""
        value = 0.0
        for metric in counter.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total") and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    value += sample.value
        return value
