"""`gati probes fit` then `gati probes eval`, end to end on real ResNet-20 weights and CIFAR-10."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cli.main import main
from gati.probes.serving.bundle import Bundle

REPO = Path(__file__).resolve().parents[2]
ASSETS = Path(os.environ.get("GATI_ASSETS", REPO.parent / "shared" / "assets"))
COMMON = ["--threads", "1", "--stage-reps", "5"]


@pytest.fixture(scope="module")
def model_args() -> list[str]:
    weights = next((ASSETS / "models").glob("resnet20-*.th"))
    return ["--arch", "resnet20", f"--weights={weights}", f"--data={ASSETS}/cifar10/test.npz"]


def gati(command: str, model_args: list[str], flags: str) -> int:
    """Run `gati probes <command>` in-process (paths are passed as --flag=value)."""
    return main(["probes", command, *model_args, *flags.split(), *COMMON])


def test_fit_then_eval_on_unseen_images(tmp_path: Path, model_args: list[str], capsys) -> None:
    out = tmp_path / "bundle"
    assert gati("fit", model_args, f"--start 0 --stop 400 --bundle={out} --epochs 4") == 0
    said = capsys.readouterr().out
    assert "bundle for served model 'resnet20' (from --arch, as --model was not given)" in said
    bundle = Bundle.load(out)
    assert bundle.manifest["model"] == {"id": "resnet20", "arch": "resnet20"}
    assert len(bundle.candidates) == 9 * 4  # every cut, every variant, kept for analysis
    report = tmp_path / "eval.json"
    flags = f"--bundle={out} --start 400 --stop 600 --json={report}"
    assert gati("eval", model_args, flags) == 0
    r = json.loads(report.read_text())
    c = r["cascade"]
    assert {"agreement", "top1", "hit_rate", "speedup_expected"} <= set(c)
    assert 0.0 <= c["hit_rate"] <= 1.0 and 0.9 <= c["agreement"] <= 1.0
    assert abs(c["top1"] - c["base_top1"]) <= 0.05
    assert c["base_top1"] > 0.85  # the real ResNet-20, 91.7% on the whole test set
    assert r["oracle"]["speedup"] >= 1.0
    assert r["oracle"]["speedup_all_candidates"] > 1.5  # deep probes agree on most images
    assert [row["layer"] for row in r["layers"]] == [layer for layer, _ in bundle.plan]
    assert len(r["candidates"]) == 36
    assert r["cost_model"]["mode"] == "remote"  # as served: on the cache service, overlapped
    assert "overlapped with compute" in r["cost_model"]["assumes"]
    printed = capsys.readouterr().out
    assert "cascade: agreement" in printed and "oracle:" in printed


def test_workload_window_then_next(tmp_path: Path, model_args: list[str], capsys) -> None:
    stream = "--workload instance-locality --requests 500 --seed 3 --start 0 --stop 2000"
    out, report = tmp_path / "bundle", tmp_path / "eval.json"
    fit = f"--window-from 0 --window-to 300 --bundle={out} --epochs 3 --model cifar"
    fit += " --layers layer1.0,layer2.0,layer3.0"
    assert gati("fit", model_args, f"{stream} {fit}") == 0
    assert "bundle for served model 'cifar' (from --model)" in capsys.readouterr().out
    ev = f"--window-from 300 --window-to 500 --bundle={out} --json={report} --window 100"
    assert gati("eval", model_args, f"{stream} {ev} --lookup-mode remote") == 0
    assert Bundle.load(out).model_id == "cifar"  # the served name, not the arch
    r = json.loads(report.read_text())
    assert [w["start"] for w in r["windows"]] == [0, 100]
    assert r["seen"]["seen"]["requests"] + r["seen"]["unseen"]["requests"] == 200
    assert r["seen"]["seen"]["requests"] > 150  # a working set of 50 recurs
    assert r["cost_model"]["mode"] == "remote"
    assert "instance-locality requests 300:500" in r["data"]


def test_extra_distillation_rows_train_probes_only(tmp_path: Path, model_args: list[str]) -> None:
    """Mirrored and perturbed copies and other images join probe training; selectors and
    thresholds still see only the calibration range."""
    out = tmp_path / "bundle"
    extra = f"--augment-flip --augment-views 2 --distil-data={ASSETS}/cifar10/train-20k.npz"
    flags = f"--start 0 --stop 100 --calib-start 100 --calib-stop 300 {extra} --distil-stop 50"
    flags += f" --layers layer2.0,layer3.0 --variants conv --filters 8 --epochs 2 --bundle={out}"
    assert gati("fit", model_args, flags) == 0
    bundle = Bundle.load(out)
    split = bundle.manifest["fit"]["split"]
    assert split["train"] == 100 * (1 + 1 + 2) + 50
    assert split["select"] + split["threshold"] == 200
    assert split["novel_select"] + split["novel_threshold"] == 200  # no calibration image trained
    for entry in bundle.candidates:
        assert bundle.layer_tensors(entry)["wc"].shape[0] == 8  # --filters reached training


def test_extra_distillation_rows_need_a_calibration_range(
    tmp_path: Path, model_args: list[str]
) -> None:
    flags = f"--start 0 --stop 100 --augment-views 1 --bundle={tmp_path / 'b'}"
    with pytest.raises(SystemExit, match="never reach calibration"):
        gati("fit", model_args, flags)
