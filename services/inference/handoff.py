"""The shared memory between the model's process and its lookup relay, and the frames on the pipe.

Why a second process: a lookup stream served by threads of the model's own process takes the
GIL from the model's thread every time a message moves. Measured on the 2-core machine with
ResNet-56 on one torch thread (docs/serving.md, "Where a lookup's time goes"): each lookup then
slowed its request by 0.8-0.9 ms, two to three residual blocks, whether the client ran on
grpc's threads or on an asyncio loop. With the stream in a relay process the model's thread
only copies the activation into shared memory and writes a small frame to a pipe, and reads
replies from shared memory between stages: no GIL, no thread wake-up on its path.

Layout of one shared mapping (`Handoff`):
- a status block: counters written by the relay (one writer each), read by the model side;
- a reply table of `slots` entries, indexed by lookup `seq % slots`: seq, bundle version,
  time the reply became usable, row count, flags (error bit, hit count: a miss is read from
  the header alone), then hit/label/confidence per row. The
  relay writes a slot seqlock style (seq 0, payload, then the real seq), so a reader that sees
  its seq before and after copying the payload holds a whole reply;
- an arena of `arena_slots` fixed-size slots the model side copies activations into, slot
  `seq % arena_slots`; the relay says which seq it consumed last, and the model side never
  reuses a slot the relay has not consumed, so an activation is never overwritten unsent.
A frame on the pipe (`Frame`) is one of two kinds. A LOOKUP frame names a lookup: its slot, how
to reduce what lies there, and the request id and batch rows that go with it. A LABELS frame
carries the base model's label for batch rows of a request that sent lookups (after each row id,
its label), so the cache service can file that request's activations under them: it has seq 0,
uses no arena slot and no reply slot, and leaves CONSUMED alone, so it never disturbs the arena
accounting or the order in which lookups free their slots. A frame is at most PIPE_BUF bytes,
so concurrent writers never interleave. On the model's thread everything costs: measured in
place (between ResNet stages, caches cold) each numpy or torch call costs 5-10 us, so the hot
path is a precomputed header, one copy and one write.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
import tempfile
from dataclasses import dataclass

import numpy as np

from gati import names

PIPE_BUF = 4096  # POSIX: pipe writes up to this size are atomic
MAX_REQUEST_ID_BYTES = names.MAX_REQUEST_ID_BYTES  # longer ids are cut before the hand-over

# status block: int64 cells, each written by one side only
STATUS_CELLS = 16
CONNECTED = 0  # relay: 1 while its Lookup stream is open
CONSUMED = 1  # relay: seq of the last frame whose activation it has taken
RELAYED = 2  # relay: lookups sent on the stream
REPLIED = 3  # relay: replies written to the table
DROPPED_DOWN = 4  # relay: frames dropped because the stream was down
STREAMS = 5  # relay: streams opened (1 + reconnects)
LABELS_RELAYED = 6  # relay: label messages sent on the stream
LABELS_DROPPED_DOWN = 7  # relay: label frames dropped because the stream was down
STATUS_BYTES = STATUS_CELLS * 8

SLOT_HEADER = 32  # seq u64, version i64, replied_at f64, rows u32, flags u32
ERROR_FLAG = 1  # flags: bit 0 says the reply is an error; flags >> 1 is the count of hit rows


NCHW, NHWC = 0, 1  # memory order of a raw activation in its slot
LOOKUP, LABELS = 0, 1  # Frame.kind


@dataclass(frozen=True)
class Frame:
    """One lookup (kind LOOKUP) or one set of base-model labels (kind LABELS) as the model side
    hands it to the relay.

    Wire form: HEAD, the request id, `rows` little-endian int32 row ids, and for LABELS `rows`
    little-endian int32 labels (one per row id). A LABELS frame leaves every other head field 0
    but `rows` and `model`.

    `grid` 0: the slot holds [rows, channels] float32, already reduced; `grid` g > 0: it holds
    the raw activation of `rows` x channels x height x width float32 in memory order `layout`,
    which the relay pools to a g x g grid (block means: the model side sends raw only when g
    divides height and width)."""

    kind: int
    seq: int
    version: int
    rows: int
    model: int  # index into the relay's model table
    stage: int  # cut index
    grid: int
    layout: int
    channels: int
    height: int
    width: int
    request_id: bytes
    row_ids: bytes  # [rows] little-endian int32
    labels: bytes = b""  # LABELS: [rows] little-endian int32

    HEAD = struct.Struct("<BQqHHHBBHHHH")  # kind, seq, ..., width, request id length

    def pack(self) -> bytes:
        rid = self.request_id[:MAX_REQUEST_ID_BYTES]
        return (
            self.HEAD.pack(
                self.kind,
                self.seq,
                self.version,
                self.rows,
                self.model,
                self.stage,
                self.grid,
                self.layout,
                self.channels,
                self.height,
                self.width,
                len(rid),
            )
            + rid
            + self.row_ids
            + self.labels
        )

    @property
    def nbytes(self) -> int:
        per_row = self.channels * (self.height * self.width if self.grid else 1)
        return 4 * self.rows * per_row

    @classmethod
    def max_rows(cls, kind: int = LOOKUP) -> int:
        """Most batch rows one frame of `kind` can carry within PIPE_BUF."""
        return (PIPE_BUF - cls.HEAD.size - MAX_REQUEST_ID_BYTES) // _row_bytes(kind)

    @classmethod
    def unpack_from(cls, buf: bytes | bytearray, start: int = 0) -> tuple[Frame, int] | None:
        """(frame, bytes used) from buf[start:], or None when the frame is not whole yet."""
        head = cls.HEAD
        if len(buf) - start < head.size:
            return None
        fields = head.unpack_from(buf, start)
        kind, rows, rid_len = fields[0], fields[3], fields[-1]
        size = head.size + rid_len + _row_bytes(kind) * rows
        if len(buf) - start < size:
            return None
        at = start + head.size
        rid = bytes(buf[at : at + rid_len])
        at += rid_len
        row_ids = bytes(buf[at : at + 4 * rows])
        labels = bytes(buf[at + 4 * rows : start + size])
        return cls(*fields[:-1], rid, row_ids, labels), size


def _row_bytes(kind: int) -> int:
    """Pipe bytes per batch row after the request id: a row id, and for LABELS its label."""
    return 8 if kind == LABELS else 4


class Handoff:
    """Views of the shared mapping; `create` on the model side, `attach` in the relay."""

    def __init__(
        self, fd: int, slots: int, max_rows: int, arena_slots: int, arena_slot_bytes: int
    ) -> None:
        self.fd = fd
        self.slots, self.max_rows = slots, max_rows
        self.arena_slots, self.arena_slot_bytes = arena_slots, arena_slot_bytes
        r = _aligned(max_rows)
        self.slot_bytes = SLOT_HEADER + 9 * r
        self.size = self.bytes_needed(slots, max_rows, arena_slots, arena_slot_bytes)
        self._mm = mmap.mmap(fd, self.size)
        buf, s, sb = self._mm, slots, self.slot_bytes
        self.status = np.ndarray((STATUS_CELLS,), np.int64, buf, 0)
        base = STATUS_BYTES

        def column(dtype: str, offset: int) -> np.ndarray:
            return np.ndarray((s,), dtype, buf, base + offset, (sb,))

        def rows(dtype: str, offset: int, itemsize: int) -> np.ndarray:
            return np.ndarray((s, max_rows), dtype, buf, base + offset, (sb, itemsize))

        self.seq = column("<u8", 0)
        self.version = column("<i8", 8)
        self.replied_at = column("<f8", 16)
        self.rows = column("<u4", 24)
        self.flags = column("<u4", 28)
        self.hit = rows("u1", SLOT_HEADER, 1)
        self.label = rows("<i4", SLOT_HEADER + r, 4)
        self.confidence = rows("<f4", SLOT_HEADER + 5 * r, 4)
        self.arena = np.ndarray(
            (arena_slots, arena_slot_bytes // 4), np.float32, buf, base + s * sb
        )  # one row per arena slot

    @staticmethod
    def bytes_needed(slots: int, max_rows: int, arena_slots: int, arena_slot_bytes: int) -> int:
        table = slots * (SLOT_HEADER + 9 * _aligned(max_rows))
        return STATUS_BYTES + table + arena_slots * (arena_slot_bytes // 4) * 4

    @classmethod
    def create(cls, slots: int, max_rows: int, arena_slots: int, arena_slot_bytes: int) -> Handoff:
        """A fresh, zeroed mapping backed by an anonymous file (no name left behind)."""
        size = cls.bytes_needed(slots, max_rows, arena_slots, arena_slot_bytes)
        return cls(_anonymous_file(size), slots, max_rows, arena_slots, arena_slot_bytes)

    def reset(self) -> None:
        """Forget every reply and counter (a new relay starts from a clean table)."""
        self.status[:] = 0
        self.seq[:] = 0

    # --- relay side -------------------------------------------------------------------------
    def publish(
        self,
        seq: int,
        version: int,
        replied_at: float,
        hit: np.ndarray,
        label: np.ndarray,
        confidence: np.ndarray,
        error: bool,
    ) -> None:
        """Write one reply into its slot (seqlock: invalidate, fill, then name it)."""
        s = seq % self.slots
        n = min(len(hit), self.max_rows)
        self.seq[s] = 0
        self.version[s] = version
        self.replied_at[s] = replied_at
        self.rows[s] = n
        self.flags[s] = (int(np.count_nonzero(hit[:n])) << 1) | (ERROR_FLAG if error else 0)
        if n:
            self.hit[s, :n] = hit[:n]
            self.label[s, :n] = label[:n]
            self.confidence[s, :n] = confidence[:n]
        self.seq[s] = seq

    def activation(self, frame: Frame) -> np.ndarray:
        """The frame's activation as float32 [rows, C*g*g], channel-major like
        `gati.probes.serving.reductions.reduce` (a new array: the slot is reused)."""
        n, g, c, h, w = frame.rows, frame.grid, frame.channels, frame.height, frame.width
        raw = self.arena[frame.seq % self.arena_slots, : frame.nbytes // 4]
        if g == 0:
            return raw.reshape(n, c).copy()
        if frame.layout == NHWC:
            pooled = raw.reshape(n, g, h // g, g, w // g, c).mean(axis=(2, 4))  # [n, g, g, c]
            pooled = pooled.transpose(0, 3, 1, 2)
        else:
            pooled = raw.reshape(n, c, g, h // g, g, w // g).mean(axis=(3, 5))  # [n, c, g, g]
        return np.ascontiguousarray(pooled, dtype=np.float32).reshape(n, c * g * g)

    def close(self) -> None:
        """Unmap (once no view of ours is in use any more) and close the fd."""
        for name in ("status", "seq", "version", "replied_at", "rows", "flags", "hit", "label"):
            delattr(self, name)
        del self.confidence, self.arena
        with contextlib.suppress(BufferError):  # a caller still holds a view: the GC unmaps
            self._mm.close()
        os.close(self.fd)


def _aligned(rows: int) -> int:
    """Rows rounded up to a multiple of 8, so every per-row array in a slot stays aligned."""
    return -(-rows // 8) * 8


def _anonymous_file(size: int) -> int:
    """An fd of `size` zero bytes that no path names (memfd on Linux, unlinked file elsewhere)."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("gati-handoff", 0)
    else:  # pragma: no cover - non-Linux
        fd, path = tempfile.mkstemp(prefix="gati-handoff-")
        os.unlink(path)
    os.ftruncate(fd, size)
    return fd
