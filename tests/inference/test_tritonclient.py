"""The stock tritonclient.grpc client against `gati serve inference` in its own process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from gati.models import load_model
from launch.ports import free_port
from launch.processes import start_healthy
from launch.topology import Inference, Model

CHECK = Path(__file__).with_name("triton_client_check.py")


def test_tritonclient_talks_to_gati(tmp_path: Path, resnet20_weights: Path, assets: Path) -> None:
    x = np.load(assets / "cifar10" / "test.npz")["x"][:16]
    npz = tmp_path / "images.npz"
    np.savez(npz, x=x)
    port = free_port()
    service = Inference(port=port, model=Model("cifar", "resnet20", resnet20_weights))
    server = start_healthy(service, tmp_path / "inference.log", 120)
    try:
        run = subprocess.run(
            [sys.executable, str(CHECK), f"127.0.0.1:{port}", "cifar", str(npz)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stderr
        got = json.loads(run.stdout)
    finally:
        server.stop()
    assert got["live"] and got["ready"] and got["model_ready"]
    assert got["server_name"] == "gati"
    assert got["inputs"] == [["image", "UINT8", [-1, 32, 32, 3]]]
    assert ["scores", "FP32", [-1, 10]] in got["outputs"]
    assert ["label", "INT64", [-1]] in got["outputs"]
    model = load_model("resnet20", resnet20_weights)
    with torch.inference_mode():
        expected = model(torch.from_numpy(x)).numpy()
    for batch in (1, 16):
        scores = np.array(got[f"scores_{batch}"], dtype=np.float32)
        assert scores.shape == (batch, 10)
        np.testing.assert_allclose(scores, expected[:batch], rtol=1e-4, atol=1e-4)
        assert got[f"labels_{batch}"] == expected[:batch].argmax(1).tolist()


def test_proto_matches_tritons_field_numbers() -> None:
    """Every message and field of gati's inference proto has Triton's name and number."""
    dump = (
        "import json, tritonclient.grpc.service_pb2 as t\n"
        "def walk(d, p):\n"
        "    out = {p + '.' + f.name: [f.number, f.type, f.is_repeated] for f in d.fields}\n"
        "    for n in d.nested_types: out.update(walk(n, p + '.' + n.name))\n"
        "    return out\n"
        "r = {}\n"
        "for n, d in t.DESCRIPTOR.message_types_by_name.items(): r.update(walk(d, n))\n"
        "s = t.DESCRIPTOR.services_by_name['GRPCInferenceService']\n"
        "r.update({'rpc.' + m.name: [m.input_type.full_name, m.output_type.full_name]"
        " for m in s.methods})\n"
        "print(json.dumps(r))\n"
    )
    run = subprocess.run([sys.executable, "-c", dump], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    triton = json.loads(run.stdout)
    from gati.api import grpc_service_pb2 as ours

    def walk(d, p):
        out = {p + "." + f.name: [f.number, f.type, f.is_repeated] for f in d.fields}
        for n in d.nested_types:
            out.update(walk(n, p + "." + n.name))
        return out

    mine = {}
    for n, d in ours.DESCRIPTOR.message_types_by_name.items():
        mine.update(walk(d, n))
    service = ours.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    mine.update(
        {
            "rpc." + m.name: [m.input_type.full_name, m.output_type.full_name]
            for m in service.methods
        }
    )
    assert len(mine) > 60
    for key, value in mine.items():
        assert triton.get(key) == value, key
