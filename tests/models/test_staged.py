"""Staged models: CIFAR ResNets load safely and stage correctly; user models by cut names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from gati.models import StagedModel, load_model, stage_sequential
from gati.models.resnet_cifar import DEPTHS, build_resnet
from gati.models.staged import InputSpec
from tests.inference.user_model import make_net


@pytest.mark.parametrize("arch", sorted(DEPTHS))
def test_resnet_shapes_and_cut_points(arch: str) -> None:
    model = build_resnet(arch).eval()
    n = DEPTHS[arch]
    assert len(model.cut_names) == 3 * n
    assert model.cut_names[0] == "layer1.0" and model.cut_names[-1] == f"layer3.{n - 1}"
    shapes = model.cut_shapes()
    assert shapes["layer1.0"] == (16, 32, 32)
    assert shapes["layer2.0"] == (32, 16, 16)
    assert shapes[f"layer3.{n - 1}"] == (64, 8, 8)


def test_checkpoint_loads_and_cuts_agree_with_forward(resnet20_weights: Path) -> None:
    model = load_model("resnet20", resnet20_weights)
    x = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), np.uint8))
    with torch.inference_mode():
        logits = model(x)
        staged, acts = model.forward_with_cuts(x, ["layer2.0", "layer3.2"])
    torch.testing.assert_close(logits, staged)
    assert set(acts) == {"layer2.0", "layer3.2"}
    assert model.fingerprint() == load_model("resnet20", resnet20_weights).fingerprint()
    assert model.fingerprint() != build_resnet("resnet20").fingerprint()


def test_wrong_checkpoint_is_refused(tmp_path: Path, resnet20_weights: Path) -> None:
    with pytest.raises(ValueError, match="does not fit resnet32"):
        load_model("resnet32", resnet20_weights)
    with pytest.raises(FileNotFoundError):
        load_model("resnet20", tmp_path / "missing.th")
    with pytest.raises(ValueError, match="unknown arch 'vgg'"):
        load_model("vgg", resnet20_weights)


def test_stage_a_user_model_by_cut_names() -> None:
    net = make_net()
    staged = stage_sequential(
        net, ["1", "3"], arch="tiny", input_spec=InputSpec("FP32", (8,)), num_classes=3
    )
    assert isinstance(staged, StagedModel)
    assert staged.cut_names == ("1", "3") and staged.num_stages == 3
    x = torch.randn(5, 8)
    with torch.inference_mode():
        torch.testing.assert_close(staged(x), net(x))
        _, acts = staged.forward_with_cuts(x)
    assert acts["1"].shape == (5, 16)


def test_unknown_cut_name_is_a_clear_error() -> None:
    with pytest.raises(
        ValueError, match=r"cut point 'relu9' is not a child .* valid: 0, 1, 2, 3, 4"
    ):
        stage_sequential(
            make_net(), ["relu9"], arch="t", input_spec=InputSpec("FP32", (8,)), num_classes=3
        )
    with pytest.raises(ValueError, match="head"):
        stage_sequential(
            make_net(), ["4"], arch="t", input_spec=InputSpec("FP32", (8,)), num_classes=3
        )
    staged = stage_sequential(
        nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)),
        ["0"],
        arch="t",
        input_spec=InputSpec("FP32", (2,)),
        num_classes=2,
    )
    with pytest.raises(ValueError, match="unknown cut point 'x'"):
        staged.cut_index("x")
