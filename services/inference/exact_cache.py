"""Exact-match response cache in front of the first stage (like Triton's response cache).

Keyed by a hash of one row's input bytes and the model, bounded (LRU). Only answers the
base model itself computed in full are stored, so it never serves an answer the base model
would not give (learned-cache hits are never stored).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import numpy as np


class ExactCache:
    def __init__(self, entries: int) -> None:
        self.capacity = entries
        self._items: OrderedDict[bytes, tuple[np.ndarray, int]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(model: str, row: np.ndarray) -> bytes:
        digest = hashlib.blake2b(digest_size=20)
        digest.update(model.encode())
        digest.update(str(row.dtype).encode() + str(row.shape).encode())
        digest.update(np.ascontiguousarray(row).data)
        return digest.digest()

    def get(self, key: bytes) -> tuple[np.ndarray, int] | None:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
            return item

    def put(self, key: bytes, scores: np.ndarray, label: int) -> None:
        with self._lock:
            self._items[key] = (scores.copy(), int(label))
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)
