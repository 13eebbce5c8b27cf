"""The learning loop end to end: three services as processes, a real broker and Redis.

No bundle at the start: every request runs the full model, the trainer learns probes from the
activation records and publishes them, and hits come by themselves on an instance-locality
stream while served agreement (checked here against the base model's own answer for every
request) holds the target. Then the trainer is killed and restarted (it resumes from its
committed offsets), and the broker is stopped for a while (serving goes on, drops are
counted) and brought back empty, as a fresh cluster would be (the loop recovers).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from bench.stack import Stack, local_stack, request
from gati import names
from gati.api import grpc_service_pb2_grpc as pb_grpc
from gati.data import load_npz
from gati.models import load_model
from gati.workloads import make_stream
from launch.processes import wait_for_port, wait_serving

MODEL = "cifar"
TARGET = 0.99
# The bootstrap stream is paced like the offline replay of docs/learning.md: on two shared
# cores a retraining round takes ~10 s, so back to back (~100 requests/s) the 5000 requests
# would pass in ~4 rounds, fewer than the loop needs when its first fits are too small to
# calibrate (they return "no caches pay").
RATE = 60.0


def _send(stub, images: np.ndarray, rate: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Send one request per image; with `rate`, no faster than that many per second."""
    labels, hits, versions = [], [], []
    start = time.monotonic()
    for i, image in enumerate(images):
        if rate:
            time.sleep(max(0.0, start + i / rate - time.monotonic()))
        reply = stub.ModelInfer(request(MODEL, image[None]), timeout=30)
        labels.append(np.frombuffer(reply.raw_output_contents[1], dtype=np.int64)[0])
        hits.append(reply.parameters[names.PARAM_HIT].bool_param)
        versions.append(reply.parameters[names.PARAM_BUNDLE_VERSION].int64_param)
    return np.array(labels), np.array(hits), np.array(versions)


def _wait_metric(stack: Stack, service: str, name: str, above: float, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    value = stack.metric(service, name)
    while value <= above and time.monotonic() < deadline:
        time.sleep(0.5)
        value = stack.metric(service, name)
    return value


def test_loop_bootstraps_and_survives_trainer_and_broker_restarts(
    tmp_path: Path, assets: Path, resnet56_weights: Path
) -> None:
    x, y = load_npz(assets / "cifar10" / "test.npz")
    stream = make_stream("instance-locality", x, y, 6000, seed=7)
    model = load_model("resnet56", resnet56_weights)
    with torch.inference_mode():
        base = np.concatenate(
            [
                model(torch.from_numpy(stream.images[i : i + 500])).argmax(1).numpy()
                for i in range(0, len(stream), 500)
            ]
        )
    del model
    trainer_args = (
        "--min-records",
        "1000",
        "--retrain-every",
        "400",
        "--retrain-seconds",
        "10",
        "--variants",
        "linear,mlp",
        "--agreement-target",
        str(TARGET),
    )
    with (
        local_stack(
            tmp_path,
            MODEL,
            "resnet56",
            str(resnet56_weights),
            kafka=True,
            trainer=True,
            trainer_args=trainer_args,
            inference_args=("--exact-cache-entries", "0", "--plan-refresh-seconds", "0.5"),
        ) as stack,
        stack.channel() as channel,
    ):
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        # 1. bootstrap: hits by themselves within 5000 requests, agreement held
        labels, hits, versions = [], [], []
        sent = 0
        while sent < 5000:
            lab, hit, ver = _send(stub, stream.images[sent : sent + 250], RATE)
            labels.append(lab)
            hits.append(hit)
            versions.append(ver)
            sent += 250
            if sent >= 1500 and np.concatenate(hits)[-500:].mean() >= 0.3:
                break
        labels_a, hits_a = np.concatenate(labels), np.concatenate(hits)
        agreement = float((labels_a == base[:sent]).mean())
        trailing = float(hits_a[-500:].mean())
        first_bundle = int(np.argmax(np.concatenate(versions) > 0))
        print(
            f"\nbootstrap: first bundle at request {first_bundle}, trailing hit rate "
            f"{trailing:.2f} after {sent} requests, served agreement {agreement:.4f}"
        )
        assert trailing >= 0.3
        assert agreement >= TARGET

        # 2. trainer killed and restarted: resumes from committed offsets
        consumed_before = stack.metric("trainer", "gati_trainer_records_consumed_total")
        stack.processes["trainer"].kill()
        _send(stub, stream.images[sent : sent + 200])
        sent += 200
        produced = _wait_metric(stack, "inference", "gati_records_sent_total", sent - 1, 20)
        stack.processes["trainer"].start()
        wait_serving(stack.services["trainer"], stack.processes["trainer"], 120)
        resumed = _wait_metric(stack, "trainer", "gati_trainer_records_consumed_total", 199, 60)
        print(
            f"trainer: consumed {consumed_before:.0f} before the kill; after restart "
            f"{resumed:.0f} of {produced:.0f} produced"
        )
        assert resumed >= 200  # what was produced while it was down
        assert resumed < produced  # not replayed from the beginning

        # 3. broker down: serving goes on, drops counted; back empty: the loop recovers
        kafka = stack.processes["kafka"]
        kafka.stop()
        dropped_before = stack.metric("inference", "gati_records_dropped_total")
        lab, _, _ = _send(stub, stream.images[sent : sent + 200])
        sent += 200
        assert len(lab) == 200  # no failed request
        dropped = _wait_metric(stack, "inference", "gati_records_dropped_total", dropped_before, 30)
        sent_before = stack.metric("inference", "gati_records_sent_total")
        consumed_before = stack.metric("trainer", "gati_trainer_records_consumed_total")
        kafka.start()
        host, port = stack.kafka_bootstrap.split(":")  # type: ignore[union-attr]
        wait_for_port(host, int(port), 30)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            _send(stub, stream.images[sent : sent + 50])
            sent += 50
            if (
                stack.metric("inference", "gati_records_sent_total") > sent_before + 20
                and stack.metric("trainer", "gati_trainer_records_consumed_total")
                > consumed_before + 20
            ):
                break
        print(
            f"broker outage: {dropped - dropped_before:.0f} records dropped and counted; "
            f"records flowing again after {sent} requests"
        )
        assert dropped > dropped_before
        assert stack.metric("inference", "gati_records_sent_total") > sent_before + 20
        assert stack.metric("trainer", "gati_trainer_records_consumed_total") > consumed_before + 20
        assert stack.metric("inference", "gati_inference_failures_total") == 0
