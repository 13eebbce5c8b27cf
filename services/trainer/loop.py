"""The trainer's loop: poll Kafka, absorb into the window, commit, retrain when due, publish.

One thread does everything in order, so the order of side effects is plain:
1. poll a batch of records; with keys (`gati.signing`), check each one's signature headers
   before anything else (an unsigned or wrongly signed one is counted as forged and skipped);
   decode each (a malformed one is counted and skipped: data, never code); keep the served
   model's, count the rest; refuse the implausible ones (dated ahead of this clock, older
   than the window, or not what this model produces: `plausibility`), counted by reason and
   logged at a bounded rate;
2. absorb them into the window (duplicates dropped), then commit their offsets: a commit
   means "absorbed", so a crash loses at most an uncommitted batch, re-delivered to the next
   member;
3. when at least `min_records` labelled records are held and `retrain_every` new ones arrived
   (or `retrain_seconds` passed with some), run a round (`Learner.round`) against the bundle
   Redis holds now, and publish the candidate only if it wins on held-out records.
A failed round (e.g. too few records of some kind) is logged and counted, never fatal.
Kafka consumers keep their group membership alive from a background thread while a round
runs (`max_poll_interval_ms` allows ten minutes).

Bootstrap needs nothing special: with no bundle every request is a miss, every record is
labelled, and the first round that finds probes worth having publishes version 1.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from typing import Protocol

import torch

from gati import records
from gati.probes.serving.bundle import Bundle
from gati.signing import Keyring, SignatureError
from services.trainer.consumer import RecordSource
from services.trainer.learner import Learner, RoundResult
from services.trainer.metrics import TrainerMetrics
from services.trainer.plausibility import ModelShape, Refusal, RefusalLog, check
from services.trainer.publisher import Publisher
from services.trainer.window import ADDED, STALE, Window

log = logging.getLogger(__name__)


MAX_CLOCK_SKEW_S = 300.0  # records dated further ahead of this trainer's clock are refused
FUTURE, MALFORMED, OTHER_MODEL = "future", "malformed", "other_model"
FORGED = "forged"  # unsigned or wrongly signed while the trainer has keys


class Polled(Protocol):
    """What `absorb` takes besides bare bytes: a Kafka ConsumerRecord's value and headers."""

    value: bytes | None
    headers: list[tuple[str, bytes]] | None


class TrainerLoop:
    def __init__(
        self,
        model: str,
        source: RecordSource,
        window: Window,
        learner: Learner,
        publisher: Publisher,
        metrics: TrainerMetrics,
        *,
        min_records: int,
        retrain_every: int,
        retrain_seconds: float,
        poll_ms: int = 500,
        threads: int = 1,
        on_round: Callable[[RoundResult], None] | None = None,
        keyring: Keyring | None = None,
    ) -> None:
        self.model = model
        self.keyring = keyring  # None: records are not checked (signing off)
        self.source = source
        self.window = window
        self.learner = learner
        self.publisher = publisher
        self.metrics = metrics
        self.min_records = min_records
        self.retrain_every = retrain_every
        self.retrain_seconds = retrain_seconds
        self.poll_ms = poll_ms
        self.threads = threads
        self.on_round = on_round
        self._warm: Bundle | None = None  # the last fit, with every candidate probe
        self._last_round = time.monotonic()
        self.rounds: list[RoundResult] = []  # kept for tests and status (bounded below)
        self.shape = ModelShape.of(learner.model)  # classes and cut channels, found once
        self.refusals = RefusalLog(log)
        self._last_added: float | None = None  # monotonic time a record last entered the window
        metrics.last_record_age.set_function(self.last_record_age)

    # --- one step ---------------------------------------------------------------------------
    def step(self) -> int:
        """Poll, absorb, commit, maybe retrain. Returns the number of records polled."""
        polled = self.source.poll(self.poll_ms)
        if polled:
            self.absorb(polled)
            self.source.commit()
        if self.due():
            self.retrain()
        return len(polled)

    def absorb(self, polled: Iterable[Polled | bytes]) -> None:
        """Check, decode and add records: ConsumerRecords (value and headers), or bare values,
        which carry no signature (forged when the loop has keys)."""
        for item in polled:
            if isinstance(item, bytes | bytearray | memoryview):
                value, headers = bytes(item), None
            else:
                value, headers = item.value or b"", item.headers
            outcome = self._forged(value, headers) or self._absorb_one(value)
            self.metrics.consumed.labels(outcome).inc()
            if outcome == ADDED:
                self._last_added = time.monotonic()
        stats = self.window.stats()
        self.metrics.window.set(stats.size)
        self.metrics.live_hit_rate.set(stats.hit_rate)

    def _forged(self, value: bytes, headers: list[tuple[str, bytes]] | None) -> str | None:
        """FORGED (noted) when the loop has keys and `headers` do not sign `value`: checked
        before the bytes are decoded, so a forger's bytes reach no parser."""
        if self.keyring is None:
            return None
        try:
            self.keyring.check_headers(value, headers)
        except SignatureError as exc:
            self.refusals.note(FORGED, str(exc))
            return FORGED
        return None

    def _absorb_one(self, value: bytes) -> str:
        """Decode, check and add one record; its outcome (`consumed{outcome}`)."""
        try:
            rec = records.decode(value)
        except records.RecordError as exc:
            self.refusals.note(MALFORMED, str(exc))
            return MALFORMED
        if rec.model != self.model:
            return OTHER_MODEL
        refusal = self._refusal(rec)
        if refusal is None:
            outcome = self.window.add(rec)
            if outcome != STALE:
                return outcome
            newest = self.window.stats().newest
            refusal = Refusal(STALE, f"dated {rec.time}, window's newest {newest}")
        self.refusals.note(refusal.reason, f"{rec.request_id[:64]}/{rec.row}: {refusal.detail}")
        return refusal.reason

    def _refusal(self, rec: records.Record) -> Refusal | None:
        if not math.isfinite(rec.time) or rec.time > time.time() + MAX_CLOCK_SKEW_S:
            # the window keeps records by the newest record's time: one dated years ahead
            # would push every other record out of it
            return Refusal(FUTURE, f"dated {rec.time}")
        return check(rec, self.shape)

    def last_record_age(self) -> float:
        """Seconds since a record last entered the window; -1 before the first."""
        if self._last_added is None:
            return -1.0
        return time.monotonic() - self._last_added

    def due(self) -> bool:
        stats = self.window.stats()
        if stats.size < self.min_records or stats.new == 0:
            return False
        waited = time.monotonic() - self._last_round
        return stats.new >= self.retrain_every or waited >= self.retrain_seconds

    # --- a round ------------------------------------------------------------------------------
    def retrain(self) -> RoundResult | None:
        self.window.mark_trained()
        self._last_round = time.monotonic()
        current = self.publisher.current()
        snapshot = self.window.records()
        hit_label_rate = self.window.stats().hit_label_rate
        log.info(
            "round: %d labelled records (labelled share of hits %.2f), current bundle %s",
            len(snapshot),
            hit_label_rate,
            f"v{self.publisher.current_version}" if current is not None else "none",
        )
        try:
            with self.metrics.training.time():
                result = self.learner.round(snapshot, current, self._warm, hit_label_rate)
        except Exception:
            self.metrics.rounds.labels("failed").inc()
            log.exception("round failed")
            return None
        finally:
            self._last_round = time.monotonic()
        self._warm = result.fitted
        self._report(result)
        if result.publish:
            version = self.publisher.publish(result.candidate)
            if version is None:  # Redis down: the next round compares and publishes again
                self.metrics.rounds.labels("publish_failed").inc()
            else:
                self.metrics.rounds.labels("published").inc()
                log.info("published %s v%d: %s", self.model, version, result.reason)
        else:
            self.metrics.rounds.labels("rejected").inc()
            log.info("candidate not published: %s", result.reason)
        self.rounds = [*self.rounds[-49:], result]
        if self.on_round is not None:
            self.on_round(result)
        return result

    def _report(self, r: RoundResult) -> None:
        m = self.metrics
        for name, ev in (("candidate", r.candidate_eval), ("current", r.current_eval)):
            if ev is None:
                continue
            m.heldout_agreement.labels(name).set(ev.agreement)
            m.heldout_hit_rate.labels(name).set(ev.hit_rate)
            m.heldout_speedup.labels(name).set(ev.speedup)
        cur = r.current_eval
        log.info(
            "round took %.1fs on %d records (%d groups), %d held out: candidate %s "
            "agreement %.4f hit %.3f speedup %.3fx; current %s",
            r.seconds,
            r.train_records,
            r.groups,
            r.heldout_records,
            [f"{layer}:{red}" for layer, red in r.candidate.plan],
            r.candidate_eval.agreement,
            r.candidate_eval.hit_rate,
            r.candidate_eval.speedup,
            "none"
            if cur is None
            else f"agreement {cur.agreement:.4f} hit {cur.hit_rate:.3f} speedup {cur.speedup:.3f}x",
        )

    # --- running ----------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        log.info("trainer loop for model %s started", self.model)
        torch.set_num_threads(self.threads)  # per thread: the setting of `build` is not inherited
        while not stop.is_set():
            try:
                self.step()
            except Exception:  # one bad step must not end learning
                self.metrics.threads.error("trainer")
                log.exception("trainer step failed; going on")
                stop.wait(1.0)
        log.info("trainer loop stopped")
