"""Served through gRPC, ResNet-20 reproduces its published top-1 on all 10,000 test images."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from gati import names
from gati.data import load_npz
from services.inference.config import InferenceConfig
from services.inference.server import build
from tests.inference.helpers import infer_request, inference_stub, output


def test_resnet20_top1_through_grpc_on_full_test_set(assets: Path, resnet20_weights: Path) -> None:
    x, y = load_npz(assets / "cifar10" / "test.npz")
    srv = build(
        InferenceConfig(
            port=0,
            metrics_port=-1,
            http_port=-1,
            model="r20",
            arch="resnet20",
            weights=str(resnet20_weights),
            max_batch=500,
            exact_cache_entries=0,
        )
    )
    try:
        correct = 0
        with inference_stub(srv.port) as stub:
            for i in range(0, len(x), 500):
                reply = stub.ModelInfer(infer_request("r20", x[i : i + 500]))
                correct += int((output(reply, names.OUTPUT_LABEL) == y[i : i + 500]).sum())
    finally:
        srv.stop()
    assert len(x) == 10000
    assert round(100 * correct / len(x), 2) == 91.73


def test_bench_accuracy_smoke(tmp_path: Path, assets: Path, resnet20_weights: Path) -> None:
    out = tmp_path / "acc.json"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli.main",
            "bench",
            "accuracy",
            "--arch",
            "resnet20",
            "--weights",
            str(resnet20_weights),
            "--data",
            str(assets / "cifar10" / "test.npz"),
            "--stop",
            "200",
            "--batch",
            "100",
            "--latency-samples",
            "20",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["images"] == 200
    assert 80 < result["top1"] <= 100
    assert result["latency"]["grpc"]["n"] == 20
    assert result["latency"]["grpc"]["p50_ms"] > 0
    assert "top-1" in run.stdout
