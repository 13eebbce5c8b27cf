"""Per-(request, row) selector state, bounded and expiring.

A selector may read the previous cut's answer for the same request row (`RowState`). The
inference service never says when a request ends (a hit, a miss at the last cut, a dropped
reply all look alike from here), so states are kept in LRU order and forgotten when there are
more than `capacity` of them or when untouched for `ttl_s`. A forgotten state only costs the
selector its "previous cut" evidence; the next lookup starts a fresh one.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

from gati.probes.serving.runtime import RowState

StateKey = tuple[str, str, int]  # (model, request_id, batch row)


class RowStates:
    """Thread-safe LRU of RowState with a time-to-live."""

    def __init__(self, capacity: int, ttl_s: float) -> None:
        assert capacity >= 1 and ttl_s > 0
        self.capacity = capacity
        self.ttl_s = ttl_s
        # key -> [state, last touched (monotonic s)]; oldest touched first.
        self._entries: OrderedDict[StateKey, list] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, model: str, request_id: str, rows: Sequence[int], now: float) -> list[RowState]:
        """The states of `rows` of one request, created fresh when unknown or expired."""
        out: list[RowState] = []
        with self._lock:
            entries = self._entries
            for row in rows:
                key = (model, request_id, row)
                entry = entries.get(key)
                if entry is None or now - entry[1] > self.ttl_s:
                    entry = [RowState(), now]
                    entries[key] = entry
                else:
                    entry[1] = now
                entries.move_to_end(key)
                out.append(entry[0])
            self._evict(now)
        return out

    def _evict(self, now: float) -> None:
        # Entries are in touch order, so expired ones and the LRU surplus are all at the front.
        entries = self._entries
        while entries:
            key, (_, touched) = next(iter(entries.items()))
            if len(entries) <= self.capacity and now - touched <= self.ttl_s:
                return
            del entries[key]
