"""Label messages: the base model's labels for rows of a request that sent lookups travel from
the engine through the real CacheClient, handoff pipe and relay process onto the Lookup stream.

The cache service is a small CacheService written here and served over real gRPC: it records
what reaches it, so a test can see exactly which messages the relay sent and in which order.
Like the cache service before label messages were routed, it answers a label message with an
error reply of seq 0, which the relay must ignore.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from gati.api import cache_pb2, cache_pb2_grpc
from gati.data import load_npz
from gati.models import StagedModel, load_model
from services.inference.cache_client import CacheClient
from services.inference.engine import Engine
from services.inference.handoff import (
    CONSUMED,
    LABELS,
    LABELS_RELAYED,
    LOOKUP,
    REPLIED,
    Frame,
)
from services.inference.learned import LearnedCaches
from services.inference.metrics import InferenceMetrics
from services.inference.served import ServedModel
from services.inference.shadow import ShadowRunner

MODEL = "cifar"
LAYER = "layer1.1"
DEADLINE_S = 30.0  # generous: the machine is shared; nothing here asserts on time


class RecordingCache(cache_pb2_grpc.CacheServiceServicer):
    """A CacheService that plans one probe at LAYER, answers every lookup `hit` or miss, and
    records every LookupRequest it reads, in stream order."""

    def __init__(self, fingerprint: str, hit: bool = False, live_labels: bool = True) -> None:
        self.fingerprint = fingerprint
        self.hit = hit
        self.live_labels = live_labels
        self.received: list[cache_pb2.LookupRequest] = []
        self._lock = threading.Lock()

    def GetPlan(self, request: cache_pb2.PlanRequest, context: grpc.ServicerContext):
        return cache_pb2.Plan(
            model=request.model,
            bundle_version=1,
            model_fingerprint=self.fingerprint,
            layers=[cache_pb2.LayerPlan(layer=LAYER, reduction="pool1")],
            live_labels=self.live_labels,
        )

    def Lookup(self, request_iterator, context: grpc.ServicerContext):
        for request in request_iterator:
            with self._lock:
                self.received.append(request)
            if request.labels:  # what the servicer did before it routed label messages
                yield cache_pb2.LookupReply(
                    seq=request.seq, request_id=request.request_id, error="no activation"
                )
                continue
            n = len(request.rows)
            yield cache_pb2.LookupReply(
                seq=request.seq,
                request_id=request.request_id,
                layer=request.layer,
                hit=[self.hit] * n,
                label=[3] * n,
                confidence=[0.99] * n,
                bundle_version=1,
            )

    def messages(self, request_id: str) -> list[cache_pb2.LookupRequest]:
        with self._lock:
            return [m for m in self.received if m.request_id == request_id]

    def label_messages(self, request_id: str) -> list[cache_pb2.LookupRequest]:
        return [m for m in self.messages(request_id) if m.labels]


def _poll(condition: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {DEADLINE_S:.0f}s: {what}")
        time.sleep(0.01)


@pytest.fixture(scope="module")
def model(resnet20_weights: Path) -> StagedModel:
    return load_model("resnet20", resnet20_weights)


@pytest.fixture(scope="module")
def images(assets: Path) -> np.ndarray:
    return load_npz(assets / "cifar10" / "test.npz")[0][:8]


@pytest.fixture(scope="module")
def base_labels(model: StagedModel, images: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(images)).argmax(1).numpy()


def _serve(servicer: RecordingCache) -> tuple[grpc.Server, int]:
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    cache_pb2_grpc.add_CacheServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


class Stack:
    """The fake cache service, a real CacheClient (with its relay process) and an Engine."""

    def __init__(
        self, model: StagedModel, hit: bool = False, shadow: bool = False, live: bool = True
    ) -> None:
        self.service = RecordingCache(model.fingerprint(), hit=hit, live_labels=live)
        self.server, port = _serve(self.service)
        self.metrics = InferenceMetrics()
        self.client = CacheClient(
            f"127.0.0.1:{port}", {MODEL: model}, self.metrics, plan_refresh_seconds=0.1
        )
        self.shadow = ShadowRunner(1.0, 4, self.metrics) if shadow else None
        self.engine = Engine(
            {MODEL: ServedModel(MODEL, model)},
            self.metrics,
            cache=LearnedCaches(self.client, shadow=self.shadow),
        )
        _poll(lambda: self.client.plan(MODEL) is not None, "a plan with an active layer")

    def metric(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0

    def close(self) -> None:
        if self.shadow is not None:
            self.shadow.close()
        self.client.close()
        self.server.stop(grace=0)


@pytest.fixture
def stack(model: StagedModel) -> Iterator[Stack]:
    s = Stack(model)
    yield s
    s.close()


def test_frame_kinds_round_trip_and_labels_need_no_slot() -> None:
    rows = np.array([0, 2, 5], np.int32)
    labels = np.array([7, 1, 9], np.int32)
    frame = Frame(LABELS, 0, 0, 3, 1, 0, 0, 0, 0, 0, 0, b"req", rows.tobytes(), labels.tobytes())
    lookup = Frame(LOOKUP, 9, 2, 3, 1, 4, 1, 0, 16, 32, 32, b"req", rows.tobytes())
    wire = frame.pack() + lookup.pack()
    got, used = Frame.unpack_from(wire)  # type: ignore[misc]
    assert got == frame and used == len(frame.pack())
    assert np.array_equal(np.frombuffer(got.labels, "<i4"), labels)
    assert Frame.unpack_from(wire, used) == (lookup, len(lookup.pack()))
    assert Frame.unpack_from(wire[: used - 1]) is None  # the labels not whole yet
    assert got.nbytes == 0
    assert Frame.max_rows(LABELS) == Frame.max_rows() // 2
    widest = Frame(LABELS, 0, 0, Frame.max_rows(LABELS), 0, 0, 0, 0, 0, 0, 0, b"r" * 256, b"", b"")
    assert len(widest.pack()) + 8 * widest.rows <= 4096  # within PIPE_BUF: one atomic write


def test_a_request_that_sent_lookups_names_its_base_labels(
    stack: Stack, images: np.ndarray, base_labels: np.ndarray
) -> None:
    result = stack.engine.infer(MODEL, images, request_id="with-lookups")
    assert not result.hit.any()  # every lookup missed: every row ran the whole model
    np.testing.assert_array_equal(result.labels, base_labels)
    # a request without lookups (caches off) sends none; a later one fences the stream, so
    # everything the first two wrote has reached the service once its label message has
    stack.engine.infer(MODEL, images[:3], caches=False, request_id="no-lookups")
    stack.engine.infer(MODEL, images[:2], request_id="fence")
    _poll(lambda: stack.service.label_messages("fence"), "the fence request's label message")

    messages = stack.service.messages("with-lookups")
    labelled = [m for m in messages if m.labels]
    assert len(labelled) == 1
    label = labelled[0]
    assert messages[-1] is label  # after the request's lookups, in pipe order
    assert [m.layer for m in messages[:-1]] == [LAYER]
    assert label.seq == 0 and not label.layer and not label.HasField("activation")
    assert label.model == MODEL
    assert list(label.rows) == list(range(len(images)))
    assert list(label.labels) == base_labels.tolist()
    assert stack.service.messages("no-lookups") == []
    assert list(stack.service.label_messages("fence")[0].labels) == base_labels[:2].tolist()

    assert stack.metric("gati_cache_labels_sent_total", model=MODEL) == 2
    h = stack.client.handoff
    lookups = sum(1 for m in stack.service.received if not m.labels)
    assert h.status[CONSUMED] == lookups  # label frames took no seq: the arena count is whole
    _poll(lambda: h.status[LABELS_RELAYED] == 2, "both label messages counted by the relay")
    # the service answered each label message with seq 0; the relay published none of them
    _poll(lambda: h.status[REPLIED] >= lookups, "every lookup's reply read by the relay")
    assert h.status[REPLIED] == lookups


def test_no_label_is_sent_when_the_plan_wants_none(model: StagedModel, images: np.ndarray) -> None:
    """A cache service without an active live rule would file labels for nothing: none go."""
    stack = Stack(model, live=False)
    try:
        stack.engine.infer(MODEL, images, request_id="quiet")
        stack.engine.infer(MODEL, images[:1], request_id="fence")  # after it on the same pipe
        _poll(lambda: stack.service.messages("fence"), "the next request's lookup")
        assert [m.layer for m in stack.service.messages("quiet")] == [LAYER]
        assert stack.metric("gati_cache_labels_sent_total", model=MODEL) == 0
    finally:
        stack.close()


def test_labels_are_dropped_and_counted_when_the_relay_is_gone(
    stack: Stack, images: np.ndarray, base_labels: np.ndarray
) -> None:
    rows, labels = np.arange(2, dtype=np.int32), base_labels[:2].astype(np.int32)
    relay = stack.client.relay.process
    assert relay is not None
    relay.kill()
    relay.wait()
    # the supervisor starts a relay again only after a backoff, and it must connect first
    assert not stack.client.label(b"while-gone", MODEL, rows, labels)
    dropped = stack.metric("gati_cache_labels_dropped_total", reason="relay") + stack.metric(
        "gati_cache_labels_dropped_total", reason="down"
    )
    assert dropped == 1
    assert stack.metric("gati_cache_labels_sent_total", model=MODEL) == 0
    # the restarted relay carries label messages again (the dead one's CONNECTED is stale
    # until the supervisor notices, so wait for the new process to connect)
    _poll(
        lambda: stack.client.relay.process is not relay and stack.client.connected,
        "a new relay connected",
    )
    stack.engine.infer(MODEL, images[:2], request_id="after-restart")
    _poll(lambda: stack.service.label_messages("after-restart"), "labels after the restart")
    assert stack.service.messages("while-gone") == []


def test_labels_are_dropped_and_counted_while_the_stream_is_down(
    stack: Stack, base_labels: np.ndarray
) -> None:
    stack.server.stop(grace=0)
    _poll(lambda: not stack.client.connected, "the relay to see its stream end")
    rows, labels = np.arange(2, dtype=np.int32), base_labels[:2].astype(np.int32)
    assert not stack.client.label(b"stream-down", MODEL, rows, labels)
    assert stack.metric("gati_cache_labels_dropped_total", reason="down") == 1


def test_shadow_completions_name_the_base_labels_of_hit_rows(
    model: StagedModel, images: np.ndarray, base_labels: np.ndarray
) -> None:
    s = Stack(model, hit=True, shadow=True)
    try:
        hit_rows = np.zeros(0, bool)
        for k in range(50):  # a reply races the model; rows exit once it wins
            rid = f"hits-{k}"
            result = s.engine.infer(MODEL, images, request_id=rid)
            if result.hit.any():
                hit_rows = result.hit
                break
        assert hit_rows.any(), "no row exited on a hit"

        def covered() -> list[int]:
            return sorted(r for m in s.service.label_messages(rid) for r in m.rows)

        # every row's base label arrives exactly once: the hits' from the shadow completion,
        # the rest's from the pass itself
        _poll(lambda: len(covered()) >= len(images), "labels for every row of the request")
        assert covered() == list(range(len(images)))
        got = {
            r: lab
            for m in s.service.label_messages(rid)
            for r, lab in zip(m.rows, m.labels, strict=True)
        }
        assert [got[r] for r in range(len(images))] == base_labels.tolist()
        shadowed = [
            m for m in s.service.label_messages(rid) if set(m.rows) <= set(np.flatnonzero(hit_rows))
        ]
        assert shadowed, "no label message came from the shadow completion"
    finally:
        s.close()


def test_labels_of_a_batch_wider_than_a_frame_go_in_several_frames(stack: Stack) -> None:
    n = 2 * Frame.max_rows(LABELS) + 5
    rows = np.arange(n, dtype=np.int32)
    labels = (rows % 10).astype(np.int32)
    assert stack.client.label(b"wide", MODEL, rows, labels)

    def seen() -> list[cache_pb2.LookupRequest]:
        return stack.service.label_messages("wide")

    _poll(lambda: sum(len(m.rows) for m in seen()) >= n, "every row of the wide batch")
    assert len(seen()) == 3
    assert [r for m in seen() for r in m.rows] == rows.tolist()
    assert [v for m in seen() for v in m.labels] == labels.tolist()
    assert stack.metric("gati_cache_labels_sent_total", model=MODEL) == 3
