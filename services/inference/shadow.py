"""Shadow completion: finish the base model in the background for a sample of hits.

It gives the trainer labels for hits, the guard a live agreement measurement, and (with the
request's cache client) the cache service the hit rows' base labels, to file the activations
it received for them under. At most `inflight` completions run at once; a sampled hit that
finds every slot busy is skipped and counted, so background work cannot pile up behind
foreground requests.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from services.common import cpus
from services.inference.cache_client import CacheClient
from services.inference.guard import LiveGuard
from services.inference.handoff import MAX_REQUEST_ID_BYTES
from services.inference.metrics import InferenceMetrics
from services.inference.record_jobs import RecordJob, RecordSink, RowRecord
from services.inference.served import ServedModel

log = logging.getLogger(__name__)


class ShadowRunner:
    def __init__(
        self,
        fraction: float,
        inflight: int,
        metrics: InferenceMetrics,
        guard: LiveGuard | None = None,
        recorder: RecordSink | None = None,
        record_layers: dict[str, frozenset[int]] | None = None,
        background_cpus: str = "",
    ) -> None:
        self.fraction = fraction
        self._slots = threading.Semaphore(max(inflight, 1))
        self._pool = ThreadPoolExecutor(
            max_workers=max(inflight, 1),
            thread_name_prefix="shadow",
            initializer=cpus.to_background,
            initargs=(background_cpus, "shadow completions"),
        )
        self._metrics = metrics
        self._guard = guard
        self._recorder = recorder
        self._record_layers = record_layers or {}
        # The pool's workers outlive any task (an exception ends up in its future), so what
        # can die is the pool itself: shadow work then stops, and health says so.
        self._broken = False
        metrics.threads.watch("shadow", lambda: not self._broken)

    def wanted(self) -> bool:
        return self.fraction > 0 and random.random() < self.fraction

    def submit(
        self,
        served: ServedModel,
        stage: int,
        h: torch.Tensor,
        rows: list[tuple[int, str, int, RowRecord | None]],
        request_id: str,
        version: int,
        cache: CacheClient | None = None,
    ) -> bool:
        if not self._slots.acquire(blocking=False):
            self._metrics.shadow_skipped.labels(served.name).inc(len(rows))
            return False
        try:
            self._pool.submit(self._run, served, stage, h, rows, request_id, version, cache)
        except RuntimeError:  # the pool is shut down or broken: never fail the request for it
            self._slots.release()
            self._metrics.threads.error("shadow")
            if not self._broken:  # once, not at every sampled hit from now on
                log.exception("shadow completions cannot be started any more")
            self._broken = True
            return False
        return True

    def _run(
        self,
        served: ServedModel,
        stage: int,
        h: torch.Tensor,
        rows: list[tuple[int, str, int, RowRecord | None]],
        request_id: str,
        version: int,
        cache: CacheClient | None = None,
    ) -> None:
        try:
            model = served.model
            record_cuts = self._record_layers.get(served.name, frozenset())
            with torch.inference_mode():
                for i in range(stage + 1, model.num_stages):
                    h = model.stages[i](h)
                    if i < model.num_stages - 1 and i in record_cuts:
                        for j, (_, _, _, rec) in enumerate(rows):
                            if rec is not None:
                                rec.activations.append((model.cut_names[i], h[j]))
                logits = h.float().numpy()
            job = RecordJob(served.name, request_id, time.time())
            for j, (_row, layer, served_label, rec) in enumerate(rows):
                base = int(logits[j].argmax())
                agree = base == served_label
                self._metrics.live_agreement.labels(served.name, layer, str(agree).lower()).inc()
                if self._guard is not None:
                    self._guard.observe(served.name, layer, version, agree)
                if rec is not None:
                    rec.base_scores = logits[j].copy()
                    rec.base_label = base
                    rec.shadow = True
                    job.rows.append(rec)
            self._metrics.shadow_runs.labels(served.name).inc(len(rows))
            if cache is not None:  # off the request path: the base labels of these hit rows
                cache.label(
                    request_id.encode()[:MAX_REQUEST_ID_BYTES],
                    served.name,
                    np.array([row for row, *_ in rows], np.int32),
                    logits.argmax(axis=1).astype(np.int32),
                )
            if job.rows and self._recorder is not None:
                self._recorder.submit(job)
        except Exception:
            # counted and logged here: the pool would keep the exception in a future no one reads
            self._metrics.threads.error("shadow")
            log.exception(
                "shadow completion of request %s (%s) failed; recording its hits without a "
                "base label",
                request_id,
                served.name,
            )
            unlabelled = [rec for *_, rec in rows if rec is not None]
            if unlabelled and self._recorder is not None:
                self._recorder.submit(RecordJob(served.name, request_id, time.time(), unlabelled))
        finally:
            self._slots.release()

    def close(self) -> None:
        """Finish what runs (at most `inflight` jobs: submit never queues beyond the slots),
        so every accepted hit's record is handed on."""
        self._pool.shutdown(wait=True)
