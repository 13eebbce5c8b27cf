"""CIFAR-10 ResNets (He et al. 2016, option A shortcuts) split into stages at every block.

Depth 6n+2 for n blocks per stage: 20, 32, 44, 56. Parameter names match the public
pytorch_resnet_cifar10 checkpoints (`conv1, bn1, layer{1,2,3}.{i}.{conv1,bn1,conv2,bn2},
linear`), so their `state_dict` loads without renaming beyond the `module.` prefix.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from gati.models.staged import InputSpec, StagedModel

DEPTHS = {"resnet20": 3, "resnet32": 5, "resnet44": 7, "resnet56": 9}  # arch -> blocks per stage
CIFAR_MEAN = (0.485, 0.456, 0.406)
CIFAR_STD = (0.229, 0.224, 0.225)


class PixelNormalize(nn.Module):
    """uint8 NHWC camera pixels -> normalised float NCHW, inside the served model."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        # Not in state_dict: they are part of the architecture, not of the weights.
        self.register_buffer("scale", 1.0 / (255.0 * torch.tensor(std).view(1, -1, 1, 1)), False)
        self.register_buffer("shift", torch.tensor(mean).view(1, -1, 1, 1), False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2).float()  # [N, H, W, C] -> [N, C, H, W]
        # (x/255 - mean)/std, written as one multiply-add
        return x * self.scale - self.shift * (self.scale * 255.0)


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN, plus shortcut, ReLU. Option A shortcut: subsample and zero-pad."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.pad = planes // 4 if (stride != 1 or in_planes != planes) else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x
        if self.pad:
            shortcut = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))
        return F.relu(out + shortcut)


class Stem(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn1(self.conv1(x)))


class Head(nn.Module):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.mean(dim=(2, 3)))


def build_resnet(arch: str, num_classes: int = 10) -> StagedModel:
    """An untrained staged CIFAR ResNet; stages: stem+first block, each block, head."""
    if arch not in DEPTHS:
        raise ValueError(f"unknown arch {arch!r}; valid: {', '.join(DEPTHS)}")
    n = DEPTHS[arch]
    blocks: list[tuple[str, nn.Module]] = []
    in_planes = 16
    for layer, planes in enumerate((16, 32, 64), start=1):
        for i in range(n):
            stride = 2 if (i == 0 and layer > 1) else 1
            blocks.append((f"layer{layer}.{i}", BasicBlock(in_planes, planes, stride)))
            in_planes = planes
    # The stem is cheap and never worth a probe on its own: it runs with the first block.
    first = nn.Sequential()
    first.add_module("stem", Stem())
    first.add_module("block", blocks[0][1])
    stages: list[nn.Module] = [first] + [b for _, b in blocks[1:]] + [Head(num_classes)]
    cuts = [name for name, _ in blocks]
    return StagedModel(
        arch,
        stages,
        cuts,
        InputSpec("UINT8", (32, 32, 3)),
        num_classes,
        preprocess=PixelNormalize(CIFAR_MEAN, CIFAR_STD),
    )


def _checkpoint_to_staged(state: dict[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    """Map `module.`-prefixed checkpoint keys onto the staged model's parameter names."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        if key.startswith(("conv1.", "bn1.")):
            out[f"stages.0.stem.{key}"] = value
        elif key.startswith("linear."):
            out[f"stages.{3 * n}.{key}"] = value
        elif key.startswith("layer"):
            layer, idx, rest = key.split(".", 2)
            flat = (int(layer[5:]) - 1) * n + int(idx)
            out["stages.0.block." + rest if flat == 0 else f"stages.{flat}.{rest}"] = value
        else:
            raise ValueError(f"unexpected key {key!r} in checkpoint")
    return out


def load_resnet(arch: str, weights: str | Path, device: str = "cpu") -> StagedModel:
    """Build `arch` and load a pytorch_resnet_cifar10 checkpoint safely (weights_only=True)."""
    model = build_resnet(arch)
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    state = blob.get("state_dict", blob) if isinstance(blob, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state_dict (or a dict with 'state_dict')")
    mapped = _checkpoint_to_staged(state, DEPTHS[arch])
    missing, unexpected = model.load_state_dict(mapped, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{path} does not fit {arch}: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return model.to(device).eval()
