"""The cache service's live memory: what it was sent for a request, filed once its label comes.

A lookup's reduced activation is held here per (model, request id), and answered from the
(model, layer) memory in the same call (`answer`). When the inference service learns the base
model's label for rows of that request (a miss that ran the whole model, a shadow completion),
it says so on the lookup stream; `label` then files the held rows under it, and a perturbed
recurrence can hit on its next sighting: no retrain, no publish. Rows are kept coarse and
unstandardised (`LiveRule.coarse`), so a new bundle's rule reads what the old one filed.

Bounds: `capacity` rows per (model, layer), oldest out first, none answering after `ttl_s`;
`pending` requests held awaiting a label (LRU), each for at most `pending_ttl_s`. A label for
a request not held (never looked up here, evicted, expired) is counted and ignored.

Replicas each learn from the lookups they see: behind a load balancer that spreads one
inference process's streams over replicas, each replica remembers only its share.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gati.probes.serving.live import LiveMemory, LiveRule
from services.cache.metrics import CacheMetrics

PENDING_TTL_S = 30.0  # a label follows its request's last lookup by milliseconds


@dataclass
class _Held:
    """One lookup's rows of a request, awaiting its label."""

    layer: str
    rows: np.ndarray  # [n] batch row ids
    coarse: np.ndarray  # [n, dim] at the rule's grid


class LiveStore:
    def __init__(
        self,
        metrics: CacheMetrics,
        capacity: int = 1024,
        ttl_s: float = 600.0,
        pending: int = 4096,
        pending_ttl_s: float = PENDING_TTL_S,
    ) -> None:
        self.metrics = metrics
        self.capacity, self.ttl_s = capacity, ttl_s
        self.pending_capacity, self.pending_ttl_s = pending, pending_ttl_s
        self._pending: OrderedDict[tuple[str, str], tuple[float, list[_Held]]] = OrderedDict()
        self._memories: dict[tuple[str, str], LiveMemory] = {}
        self._lock = threading.Lock()  # lookups run on the event loop; tests and Status elsewhere

    # --- lookups --------------------------------------------------------------------------
    def answer(
        self,
        model: str,
        request_id: str,
        layer: str,
        rule: LiveRule,
        rows: Sequence[int],
        coarse: np.ndarray,
        now: float,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Hold `coarse` [n, dim] for the request's label; (hit [n], label [n]) from memory."""
        with self._lock:
            self._hold(model, request_id, _Held(layer, np.asarray(rows), coarse), now)
            memory = self._memories.get((model, layer))
        if memory is None or memory.dim != rule.dim:
            return np.zeros(len(coarse), bool), np.full(len(coarse), -1, np.int64)
        dist_k, label = memory.query(coarse, rule.k, now, scale=rule.scale)
        return rule.hits(dist_k, label), label

    def _hold(self, model: str, request_id: str, held: _Held, now: float) -> None:
        key = (model, request_id)
        _, items = self._pending.pop(key, (now, []))
        items.append(held)
        self._pending[key] = (now, items)
        while self._pending:
            oldest, (touched, _) = next(iter(self._pending.items()))
            if len(self._pending) <= self.pending_capacity and now - touched <= self.pending_ttl_s:
                break
            del self._pending[oldest]

    # --- labels ---------------------------------------------------------------------------
    def label(
        self,
        model: str,
        request_id: str,
        rows: Sequence[int],
        labels: Sequence[int],
        now: float,
    ) -> int:
        """File the held rows of `request_id` named in `rows` under `labels`; rows filed."""
        with self._lock:
            touched, items = self._pending.pop((model, request_id), (0.0, []))
            if not items or now - touched > self.pending_ttl_s:
                self.metrics.live_labels.labels("unknown").inc()
                return 0
            by_row = dict(zip(rows, labels, strict=True))
            filed = 0
            for held in items:
                keep = np.array([int(r) in by_row for r in held.rows], bool)
                if not keep.any():
                    continue
                memory = self._memory(model, held.layer, held.coarse.shape[1])
                memory.add(
                    held.coarse[keep], np.array([by_row[int(r)] for r in held.rows[keep]]), now
                )
                self.metrics.live_rows.labels(model, held.layer).set(memory.size(now))
                filed += int(keep.sum())
        self.metrics.live_labels.labels("filed").inc()
        return filed

    def _memory(self, model: str, layer: str, dim: int) -> LiveMemory:
        memory = self._memories.get((model, layer))
        if memory is None or memory.dim != dim:  # a new bundle reads this layer at another grid
            memory = LiveMemory(dim, self.capacity, self.ttl_s)
            self._memories[(model, layer)] = memory
        return memory

    def nbytes(self) -> int:
        """Bytes the memories hold (what `capacity` bounds)."""
        with self._lock:
            return sum(m.nbytes for m in self._memories.values())
