"""The inference service's background threads: an unexpected error is counted and the loop
goes on; a thread that dies anyway turns health NOT_SERVING and shows in `gati status`.

Real Redis, a real broker, real gRPC and ResNet-20; errors are injected by replacing one
method of a running component (a test hook) or by input the model cannot take.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from gati import names
from gati.models import StagedModel, load_model
from gati.probes.fitting.synthetic import random_bundle
from services.inference.config import InferenceConfig
from services.inference.metrics import InferenceMetrics
from services.inference.record_jobs import RecordJob, RowRecord
from services.inference.recorder import Recorder
from services.inference.served import ServedModel
from services.inference.shadow import ShadowRunner
from tests.integration.inprocess import MODEL, in_process_stack
from tests.liveness_checks import freshness_line, health, sample, status_row, wait_for


def errors(metrics: InferenceMetrics, thread: str) -> float:
    return sample(metrics.registry, "gati_background_errors_total", thread=thread) or 0.0


def alive(metrics: InferenceMetrics, thread: str) -> float | None:
    return sample(metrics.registry, "gati_thread_alive", thread=thread)


@pytest.fixture(scope="module")
def model(resnet20_weights: Path) -> StagedModel:
    return load_model("resnet20", resnet20_weights)


def bundle_for(model: StagedModel, seed: int):
    """Random probes on two ResNet-20 cuts, fitted (by fingerprint) to the served model."""
    layers = {"layer1.1": ("linear", 16), "layer2.0": ("linear", 32)}
    return random_bundle(layers, model_id=MODEL, fingerprint=model.fingerprint(), seed=seed)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_plan_loop_goes_on_after_an_error_and_its_death_turns_health_off(
    redis_url: str, resnet20_weights: Path
) -> None:
    with in_process_stack(redis_url, resnet20_weights, metrics_port=0) as (_, server, store):
        client, metrics = server.cache, server.metrics
        assert client is not None and server.metrics_port is not None
        served = server.engine.models[MODEL].model
        assert store.publish(bundle_for(served, seed=1), model=MODEL) == 1
        wait_for(lambda: client.plan(MODEL) is not None, "the first plan")
        assert errors(metrics, "cache-plan") == 0
        row = status_row("inference", server.port, server.metrics_port, names.HEALTH_INFERENCE)
        assert row.ok and row.dead_threads == [] and row.freshness["plans"] == {MODEL: 1}
        assert not row.freshness["missing"]  # None (never missing) or {} (found since)

        def broken() -> None:
            raise ValueError("a plan reply this client cannot read")

        client.plans.refresh = broken  # type: ignore[method-assign]
        wait_for(lambda: errors(metrics, "cache-plan") >= 2, "two failed refreshes counted")
        del client.plans.refresh  # the real one again: the same thread picks it up
        assert store.publish(bundle_for(served, seed=2), model=MODEL) == 2
        wait_for(lambda: getattr(client.plan(MODEL), "version", 0) == 2, "the next plan")
        assert alive(metrics, "cache-plan") == 1.0
        assert health(server.port, names.HEALTH_INFERENCE) == "SERVING"

        def exits() -> None:
            raise SystemExit  # ends a thread without a word: what the liveness watcher is for

        client.plans.refresh = exits  # type: ignore[method-assign]
        wait_for(lambda: health(server.port, names.HEALTH_INFERENCE) == "NOT_SERVING", "health off")
        assert alive(metrics, "cache-plan") == 0.0
        assert alive(metrics, "cache-relay") == 1.0
        row = status_row("inference", server.port, server.metrics_port, names.HEALTH_INFERENCE)
        assert not row.ok and row.dead_threads == ["cache-plan"]
        assert f"plans {MODEL} v2" in freshness_line(row)
        assert freshness_line(row).endswith(" cache-plan")


def _job(rows: int = 1) -> RecordJob:
    job = RecordJob("m", uuid.uuid4().hex, time.time())
    for r in range(rows):
        act = torch.rand(16, 8, 8)
        job.rows.append(RowRecord(r, [("cut", act)], False, "", 1, 0, np.zeros(10), 1))
    return job


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_recorder_goes_on_after_an_error_and_its_death_is_seen(kafka_bootstrap: str) -> None:
    metrics = InferenceMetrics()
    config = InferenceConfig(
        model="m",
        arch="resnet20",
        kafka_bootstrap=kafka_bootstrap,
        records_topic=f"records-{uuid.uuid4().hex[:8]}",
    )
    recorder = Recorder(config, metrics)
    try:
        real = recorder._handle

        def broken(job: RecordJob) -> None:
            raise TypeError("not what encoding a record expects")

        recorder._handle = broken  # type: ignore[method-assign]
        assert recorder.submit(_job(rows=2))
        dropped = "gati_records_dropped_total"
        wait_for(lambda: sample(metrics.registry, dropped, reason="error") == 2.0, "rows dropped")
        assert errors(metrics, "recorder") == 1
        recorder._handle = real  # type: ignore[method-assign]
        assert recorder.submit(_job())
        wait_for(
            lambda: (sample(metrics.registry, "gati_records_sent_total") or 0) >= 1,
            "the next job delivered by the same thread",
        )
        assert alive(metrics, "recorder") == 1.0 and metrics.threads.dead() == []

        def exits(job: RecordJob) -> None:
            raise SystemExit

        recorder._handle = exits  # type: ignore[method-assign]
        assert recorder.submit(_job())
        wait_for(lambda: alive(metrics, "recorder") == 0.0, "the recorder's death seen")
        assert metrics.threads.dead() == ["recorder"]
    finally:
        recorder.close(timeout=5)


def test_shadow_completion_counts_input_it_cannot_take_and_goes_on(model: StagedModel) -> None:
    metrics = InferenceMetrics()
    runner = ShadowRunner(1.0, 2, metrics)  # two slots: the failed one may not be free yet
    served = ServedModel("m", model)
    _, acts = model.forward_with_cuts(model.example_input(1))
    good = acts[model.cut_names[0]]
    rows = [(0, model.cut_names[0], 3, None)]
    try:
        bad = torch.zeros(1, 5, 3, 3)  # no stage of ResNet-20 takes 5 channels
        assert runner.submit(served, 0, bad, rows, "bad", 1)
        wait_for(lambda: errors(metrics, "shadow") == 1, "the failed completion counted")
        assert runner.submit(served, 0, good, rows, "good", 1)
        runs = "gati_shadow_completions_total"
        wait_for(lambda: sample(metrics.registry, runs, model="m") == 1.0, "the next one ran")
        assert errors(metrics, "shadow") == 1
        assert alive(metrics, "shadow") == 1.0
    finally:
        runner.close()
    assert not runner.submit(served, 0, good, rows, "after close", 1)  # refused, not raised
    assert alive(metrics, "shadow") == 0.0
