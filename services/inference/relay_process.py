"""The lookup relay's process, from the model's side: start it, keep it running, stop it.

The relay (`services.inference.relay`) holds the Lookup stream in a child process
(`services.inference.handoff` says why). Here the pipe it reads frames from is made, the relay
is started with the handoff and the pipe's read end inherited, and it is supervised: a relay
that exits while we run is started again with backoff, and until then there is no pipe to
write to, so frames are dropped (and counted) instead of blocking. Frames go out only through
`send_lookup` and `send_labels`, so the lookup numbering, the pipe and the lock that keeps
them in step stay in here.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict

import numpy as np

from gati.models import StagedModel
from services.common.backoff import Backoff
from services.common.tls import ClientTls
from services.inference.handoff import CONNECTED, CONSUMED, LABELS, LOOKUP, Frame, Handoff
from services.inference.metrics import InferenceMetrics
from services.inference.relay import RelaySpec

log = logging.getLogger(__name__)

PIPE_BYTES = 1 << 20  # room for thousands of frames if the relay stalls for a moment


class RelayProcess:
    """A running relay and the pipe to it. Its lock keeps frames in seq order on the pipe (so
    slots are freed in order) and guards the pipe's write end, None while no relay reads it.
    Each relay started numbers lookups from 1 again, on a reset handoff."""

    def __init__(
        self,
        address: str,
        models: dict[str, StagedModel],
        handoff: Handoff,
        metrics: InferenceMetrics,
        max_message_bytes: int,
        cpus: str = "",
        tls: ClientTls | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._seq = itertools.count(1)
        self._process: subprocess.Popen | None = None
        self._address = address
        self._models = models
        self._handoff = handoff
        self._metrics = metrics
        self._max_message_bytes = max_message_bytes
        self._cpus = cpus
        self._tls = tls
        # model -> (its index in the relay's model table, its label-messages-sent counter)
        self._label_models = {
            name: (i, metrics.labels_sent.labels(name)) for i, name in enumerate(models)
        }
        self._label_rows = Frame.max_rows(LABELS)  # a label message of more rows is split
        self._closed = threading.Event()
        self._was_connected = False
        self._thread: threading.Thread | None = None
        self._start()

    @property
    def connected(self) -> bool:
        """The relay's Lookup stream is open and there is a pipe to it."""
        return bool(self._handoff.status[CONNECTED]) and self._fd is not None

    @property
    def process(self) -> subprocess.Popen | None:
        """The relay now running (None before the first start succeeded); read-only, so only
        the supervisor replaces it."""
        return self._process

    def send_lookup(
        self,
        slots: Sequence[np.ndarray],
        values: np.ndarray,
        head: tuple[int, ...],
        version: int,
        request_id: bytes,
        rows: np.ndarray,
    ) -> int:
        """Number one lookup, copy `values` into its arena slot (`slots`: a view of every slot,
        laid out like `values`) and write its frame (`head`: the fields between version and
        the request id's length, `rows`: int32 row ids); never blocks. Its seq, or 0 (and
        counted) when no slot is free or no relay reads the pipe."""
        h = self._handoff
        with self._lock:
            seq = next(self._seq)
            if seq - int(h.status[CONSUMED]) > h.arena_slots or self._fd is None:
                self._metrics.lookups_dropped.labels("backlog").inc()
                return 0
            np.copyto(slots[seq % h.arena_slots], values)
            frame = Frame.HEAD.pack(LOOKUP, seq, version, *head, len(request_id))
            try:
                os.write(self._fd, frame + request_id + rows.tobytes())
            except (BlockingIOError, BrokenPipeError):
                self._metrics.lookups_dropped.labels("relay").inc()
                return 0
        return seq

    def send_labels(
        self, model: str, request_id: bytes, rows: np.ndarray, labels: np.ndarray
    ) -> bool:
        """Write the base model's `labels` for batch `rows` (as many little-endian int32 each)
        of one request: one frame, more only for a batch over a frame's rows, with no seq and
        no arena slot, so lookups' slot accounting is untouched; never blocks. False (and
        counted) when a frame could not be written."""
        index, counter = self._label_models[model]
        n, step, sent = len(rows), self._label_rows, 0
        with self._lock:  # the supervisor closes and replaces the fd under it
            try:
                for at in range(0, n, step):
                    k = min(step, n - at)
                    head = Frame.HEAD.pack(
                        LABELS, 0, 0, k, index, 0, 0, 0, 0, 0, 0, len(request_id)
                    )
                    if self._fd is None:
                        raise BrokenPipeError
                    body = rows[at : at + k].tobytes() + labels[at : at + k].tobytes()
                    os.write(self._fd, head + request_id + body)
                    sent += 1
            except (BlockingIOError, BrokenPipeError):
                self._metrics.labels_dropped.labels("relay").inc()
                return False
            finally:
                if sent:
                    counter.inc(sent)
        return True

    def supervise(self, on_connect: Callable[[], None]) -> None:
        """Start the "cache-relay" thread, which restarts the relay when it exits and calls
        `on_connect` (and counts a reconnect) each time its stream comes up."""
        self._thread = threading.Thread(
            target=self._supervise, args=(on_connect,), name="cache-relay", daemon=True
        )
        self._thread.start()
        self._metrics.threads.watch(self._thread.name, self._thread)  # health, if it ends

    def _start(self) -> None:
        read_fd, write_fd = os.pipe()
        if hasattr(fcntl, "F_SETPIPE_SZ"):
            with contextlib.suppress(OSError):  # a lower system limit: the default size works
                fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        os.set_blocking(write_fd, False)
        h = self._handoff
        with self._lock:  # no lookup goes out until the new relay's pipe is in place
            h.reset()
            self._seq = itertools.count(1)
        spec = RelaySpec(
            address=self._address,
            models=list(self._models),
            cuts=[list(m.cut_names) for m in self._models.values()],
            handoff_fd=h.fd,
            pipe_fd=read_fd,
            slots=h.slots,
            max_rows=h.max_rows,
            arena_slots=h.arena_slots,
            arena_slot_bytes=h.arena_slot_bytes,
            max_message_bytes=self._max_message_bytes,
            cpus=self._cpus,
            log_level=logging.getLevelName(logging.getLogger().getEffectiveLevel()),
            tls=asdict(self._tls) if self._tls is not None else None,
        )
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "services.inference.relay", spec.to_json()],
                pass_fds=(h.fd, read_fd),
                stdin=subprocess.DEVNULL,
            )
        except BaseException:  # the supervisor tries again: leak no pipe on the way
            os.close(write_fd)
            raise
        finally:
            os.close(read_fd)
        with self._lock:
            self._fd = write_fd

    def _supervise(self, on_connect: Callable[[], None]) -> None:
        """Wait on the relay; start it again (with backoff) if it exits while we run."""
        backoff = Backoff(0.2, 5.0)
        while not self._closed.is_set():
            try:
                relay = self._process
                assert relay is not None
                while not self._closed.is_set():
                    try:
                        code = relay.wait(timeout=0.25)
                        break
                    except subprocess.TimeoutExpired:
                        self._note_connection(on_connect)
                else:
                    return
                with self._lock:
                    if self._fd is not None:  # None: the last start failed half way
                        os.close(self._fd)
                    self._fd = None
                self._handoff.status[CONNECTED] = 0
                self._metrics.relay_restarts.inc()
                log.error("lookup relay exited with %s; starting it again", code)
                if self._closed.wait(backoff.next()):
                    return
                self._start()
            except Exception:  # e.g. no pipe or process could be made: try again later
                self._metrics.threads.error("cache-relay")
                log.exception("lookup relay supervision failed; trying again")
                if self._closed.wait(backoff.next()):
                    return

    def _note_connection(self, on_connect: Callable[[], None]) -> None:
        connected = self.connected
        if connected and not self._was_connected:
            self._metrics.cache_reconnects.inc()
            on_connect()
        self._was_connected = connected

    def close(self) -> None:
        """Stop supervising, close the pipe (the relay sees EOF and exits) and reap it."""
        self._closed.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
        if self._process is not None:
            try:
                self._process.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
