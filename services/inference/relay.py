"""The lookup relay: the inference service's child process that owns the Lookup stream.

The model's process hands each lookup over as a frame on a pipe plus the activation in shared
memory (`services.inference.handoff`, which says why); this process pools the activation the
way the plan asks, sends it on one long-lived gati.v1 Lookup stream (grpc.aio: one thread for
the pipe, the stream and the replies), and writes every reply into the shared reply table,
where the model's thread finds it between stages. It reconnects with backoff; while its stream
is down it says so in the status block (the model side then serves the full model) and drops
the frames it still receives, counted. A label frame (the base model's labels for rows of a
request that sent lookups) becomes a LookupRequest with `labels` set and no activation, sent in
pipe order after that request's lookups; it gets no reply. It exits when the pipe closes: its
parent is gone.

Started as `python -m services.inference.relay SPEC_JSON` with the handoff and pipe fds
inherited; it imports no torch, so it starts in well under a second.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass

import grpc
import numpy as np

from gati.api import cache_pb2, cache_pb2_grpc
from services.common import cpus
from services.common.backoff import Backoff
from services.common.tls import ClientTls, aio_channel
from services.inference.handoff import (
    CONNECTED,
    CONSUMED,
    DROPPED_DOWN,
    LABELS,
    LABELS_DROPPED_DOWN,
    LABELS_RELAYED,
    RELAYED,
    REPLIED,
    STREAMS,
    Frame,
    Handoff,
)

log = logging.getLogger("gati.relay")

CONNECT_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class RelaySpec:
    """Everything the relay needs, passed as JSON on its command line."""

    address: str
    models: list[str]  # frame.model indexes this
    cuts: list[list[str]]  # per model: cut names, indexed by frame.stage
    handoff_fd: int
    pipe_fd: int
    slots: int
    max_rows: int
    arena_slots: int
    arena_slot_bytes: int
    max_message_bytes: int
    cpus: str = ""  # cpu list to pin to ("" : inherit the parent's)
    log_level: str = "INFO"
    tls: dict[str, str | None] | None = None  # ClientTls's file paths (None: plaintext)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> RelaySpec:
        return cls(**json.loads(text))


class Relay:
    def __init__(self, spec: RelaySpec, handoff: Handoff) -> None:
        self.spec = spec
        self.handoff = handoff
        self.status = handoff.status
        self._buf = bytearray()
        # (message, status cell counting it once sent): RELAYED or LABELS_RELAYED
        self._outbox: deque[tuple[cache_pb2.LookupRequest, int]] = deque()
        self._wake = asyncio.Event()
        self._done = asyncio.Event()

    # --- pipe -----------------------------------------------------------------------------
    def _on_pipe(self) -> None:
        try:
            data = os.read(self.spec.pipe_fd, 1 << 16)
        except BlockingIOError:
            return
        if not data:  # the model's process closed its end: it is gone or closing
            self._done.set()
            return
        self._buf += data
        at = 0
        while (item := Frame.unpack_from(self._buf, at)) is not None:
            frame, used = item
            at += used
            self._take(frame)
        del self._buf[:at]
        if self._outbox:
            self._wake.set()

    def _take(self, frame: Frame) -> None:
        if frame.kind == LABELS:
            self._take_labels(frame)
            return
        x = self.handoff.activation(frame)
        self.status[CONSUMED] = frame.seq
        if not self.status[CONNECTED]:
            self.status[DROPPED_DOWN] += 1
            return
        self._outbox.append(
            (
                cache_pb2.LookupRequest(
                    seq=frame.seq,
                    request_id=frame.request_id.decode("utf-8", "replace"),
                    model=self.spec.models[frame.model],
                    layer=self.spec.cuts[frame.model][frame.stage],
                    activation=cache_pb2.Tensor(dtype="float32", shape=x.shape, data=x.tobytes()),
                    bundle_version=frame.version,
                    rows=np.frombuffer(frame.row_ids, "<i4").tolist(),
                ),
                RELAYED,
            )
        )

    def _take_labels(self, frame: Frame) -> None:
        """A label message: no seq, no slot, so CONSUMED stays where the lookups left it."""
        if not self.status[CONNECTED]:
            self.status[LABELS_DROPPED_DOWN] += 1
            return
        self._outbox.append(
            (
                cache_pb2.LookupRequest(
                    request_id=frame.request_id.decode("utf-8", "replace"),
                    model=self.spec.models[frame.model],
                    rows=np.frombuffer(frame.row_ids, "<i4").tolist(),
                    labels=np.frombuffer(frame.labels, "<i4").tolist(),
                ),
                LABELS_RELAYED,
            )
        )

    # --- stream ---------------------------------------------------------------------------
    async def _write(self, call) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._outbox:
                message, cell = self._outbox.popleft()
                await call.write(message)
                self.status[cell] += 1

    def _publish(self, reply: cache_pb2.LookupReply) -> None:
        self.handoff.publish(
            reply.seq,
            reply.bundle_version,
            time.perf_counter(),
            np.asarray(reply.hit, dtype=np.uint8),
            np.asarray(reply.label, dtype=np.int32),
            np.asarray(reply.confidence, dtype=np.float32),
            bool(reply.error),
        )
        self.status[REPLIED] += 1

    async def _stream(self, channel: grpc.aio.Channel) -> None:
        call = cache_pb2_grpc.CacheServiceStub(channel).Lookup()
        self.status[STREAMS] += 1
        self.status[CONNECTED] = 1
        log.info("lookup stream to %s open", self.spec.address)
        writer = asyncio.ensure_future(self._write(call))
        try:
            while True:
                reply = await call.read()
                if reply is grpc.aio.EOF:
                    return
                if reply.seq == 0:  # no lookup has seq 0: an answer to a label message, which
                    continue  # wants none; publishing it would clobber reply slot 0
                self._publish(reply)
        finally:
            self.status[CONNECTED] = 0
            self._outbox.clear()
            writer.cancel()
            call.cancel()

    async def _connect_loop(self) -> None:
        options = [
            ("grpc.max_send_message_length", self.spec.max_message_bytes),
            ("grpc.max_receive_message_length", self.spec.max_message_bytes),
            ("grpc.keepalive_time_ms", 10000),
        ]
        backoff = Backoff(0.05, 2.0)
        while True:
            tls = ClientTls(**self.spec.tls) if self.spec.tls is not None else None
            async with aio_channel(self.spec.address, tls, options) as channel:
                try:
                    await asyncio.wait_for(channel.channel_ready(), CONNECT_TIMEOUT_S)
                    backoff.reset()
                    await self._stream(channel)
                except TimeoutError:
                    pass
                except grpc.aio.AioRpcError as exc:
                    log.warning("lookup stream to %s failed: %s", self.spec.address, exc.code())
            await asyncio.sleep(backoff.next())

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        os.set_blocking(self.spec.pipe_fd, False)
        loop.add_reader(self.spec.pipe_fd, self._on_pipe)
        streams = asyncio.ensure_future(self._connect_loop())
        await self._done.wait()
        streams.cancel()
        self.status[CONNECTED] = 0


def main(argv: list[str] | None = None) -> int:
    spec = RelaySpec.from_json((argv or sys.argv[1:])[0])
    logging.basicConfig(
        level=spec.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent
    cpus.pin(spec.cpus, "lookup relay")
    handoff = Handoff(
        spec.handoff_fd, spec.slots, spec.max_rows, spec.arena_slots, spec.arena_slot_bytes
    )
    asyncio.run(Relay(spec, handoff).run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
