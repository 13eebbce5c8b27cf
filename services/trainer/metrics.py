"""Prometheus metrics of the trainer service (its own registry)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.common.liveness import Liveness

TRAINING_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)


class TrainerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.consumed = Counter(
            "gati_trainer_records_consumed",
            "activation records read from Kafka, by what became of them",
            # labelled, unlabelled, duplicate, malformed, other_model; forged (unsigned or
            # wrongly signed, with keys); refused as implausible: future, stale, bad_label,
            # bad_scores, bad_layer, bad_shape, bad_request_id, nonfinite
            ["outcome"],
            registry=r,
        )
        self.last_record_age = Gauge(
            "gati_trainer_last_record_age_seconds",
            "seconds since a labelled record last entered the window (-1: none yet)",
            registry=r,
        )  # the loop sets its function: the age is computed at scrape time
        self.window = Gauge(
            "gati_trainer_window_records", "labelled records in the training window", registry=r
        )
        self.live_hit_rate = Gauge(
            "gati_trainer_live_hit_rate",
            "share of served rows that hit a cache, over the last records read",
            registry=r,
        )
        self.training = Histogram(
            "gati_trainer_training_seconds",
            "time to fit, calibrate, optimise and evaluate one candidate bundle",
            buckets=TRAINING_BUCKETS,
            registry=r,
        )
        self.rounds = Counter(
            "gati_trainer_rounds",
            "retraining rounds, by outcome",
            ["outcome"],  # published, rejected, failed
            registry=r,
        )
        self.published = Counter(
            "gati_trainer_versions_published", "bundle versions published to Redis", registry=r
        )
        self.version = Gauge(
            "gati_trainer_bundle_version",
            "bundle version the trainer last saw as current",
            registry=r,
        )
        self.heldout_agreement = Gauge(
            "gati_trainer_heldout_agreement",
            "served agreement with the base model on held-out recent records",
            ["bundle"],  # candidate, current
            registry=r,
        )
        self.heldout_hit_rate = Gauge(
            "gati_trainer_heldout_hit_rate",
            "hit rate on held-out recent records",
            ["bundle"],
            registry=r,
        )
        self.heldout_speedup = Gauge(
            "gati_trainer_heldout_speedup",
            "expected speedup (cost model) on held-out recent records",
            ["bundle"],
            registry=r,
        )
        self.commit_errors = Counter(
            "gati_trainer_commit_errors", "Kafka offset commits that failed", registry=r
        )
        self.rejoins = Counter(
            "gati_trainer_consumer_rejoins",
            "Kafka consumers rebuilt after an outage or a re-created topic",
            registry=r,
        )
        self.redis_errors = Counter(
            "gati_trainer_redis_errors", "Redis operations that failed (retried)", registry=r
        )
        # trainer (the loop thread): alive, and errors it went on from
        self.threads = Liveness(r)
