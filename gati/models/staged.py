"""A base model as an ordered list of stages with named cut points.

The inference engine runs stages one by one; after a stage whose output is a cut point with
an active probe, it sends that activation to the cache service. Preprocessing is part of the
served model (raw camera pixels in), so it is the first thing `forward` does.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class InputSpec:
    """What the served model accepts per row (the batch dimension is added by the server)."""

    datatype: str  # Open Inference Protocol datatype, e.g. "UINT8"
    shape: tuple[int, ...]  # per row, e.g. (32, 32, 3)


class StagedModel(nn.Module):
    """`preprocess`, then `stages[0..n-1]`; the output of stage i < n-1 is cut `cut_names[i]`.

    The last stage is the head and produces the class scores; it is never a cut point.
    """

    def __init__(
        self,
        arch: str,
        stages: Sequence[nn.Module],
        cut_names: Sequence[str],
        input_spec: InputSpec,
        num_classes: int,
        preprocess: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if len(cut_names) != len(stages) - 1:
            raise ValueError(
                f"{len(stages)} stages need {len(stages) - 1} cut names, got {len(cut_names)}"
            )
        if len(set(cut_names)) != len(cut_names):
            raise ValueError(f"cut names must be unique: {list(cut_names)}")
        self.arch = arch
        self.stages = nn.ModuleList(stages)
        self.cut_names: tuple[str, ...] = tuple(cut_names)
        self.input_spec = input_spec
        self.num_classes = num_classes
        self.preprocess = preprocess if preprocess is not None else nn.Identity()
        self._fingerprint: str | None = None

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    def cut_index(self, name: str) -> int:
        """Index of the stage whose output is cut `name` (ValueError naming the valid cuts)."""
        try:
            return self.cut_names.index(name)
        except ValueError:
            raise ValueError(
                f"unknown cut point {name!r} for {self.arch}; valid: {', '.join(self.cut_names)}"
            ) from None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.preprocess(x)
        for stage in self.stages:
            h = stage(h)
        return h

    @torch.inference_mode()
    def forward_with_cuts(
        self, x: torch.Tensor, cuts: Sequence[str] | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits and the activations at `cuts` (all cut points when None)."""
        wanted = set(self.cut_names if cuts is None else cuts)
        for name in wanted:
            self.cut_index(name)
        acts: dict[str, torch.Tensor] = {}
        h = self.preprocess(x)
        for i, stage in enumerate(self.stages):
            h = stage(h)
            if i < len(self.cut_names) and self.cut_names[i] in wanted:
                acts[self.cut_names[i]] = h
        return h, acts

    def fingerprint(self) -> str:
        """sha256 over the weights (names, dtypes, shapes, bytes): bundles are tied to it."""
        if self._fingerprint is None:
            digest = hashlib.sha256(self.arch.encode())
            for key, tensor in sorted(self.state_dict().items()):
                t = tensor.detach().cpu().contiguous()
                digest.update(f"{key}:{t.dtype}:{tuple(t.shape)}".encode())
                digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
            self._fingerprint = digest.hexdigest()[:32]
        return self._fingerprint

    def example_input(self, batch: int = 1) -> torch.Tensor:
        """A zero input of the accepted dtype and shape (for warm-up and shape probing)."""
        dtype = {"UINT8": np.uint8, "FP32": np.float32}[self.input_spec.datatype]
        return torch.from_numpy(np.zeros((batch, *self.input_spec.shape), dtype=dtype))

    @torch.inference_mode()
    def cut_shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-row activation shape at every cut point, found by one forward pass."""
        _, acts = self.forward_with_cuts(self.example_input(1))
        return {name: tuple(a.shape[1:]) for name, a in acts.items()}


def _resolve_child(model: nn.Module, dotted: str) -> tuple[nn.Module, str]:
    parent = model
    parts = dotted.split(".")
    for part in parts[:-1]:
        parent = getattr(parent, part)
    return parent, parts[-1]


def stage_sequential(
    model: nn.Module,
    cut_points: Sequence[str],
    *,
    arch: str,
    input_spec: InputSpec,
    num_classes: int,
    preprocess: nn.Module | None = None,
) -> StagedModel:
    """Stage a user's model whose forward runs its top-level children in order (nn.Sequential).

    `cut_points` name top-level children (as in `model.named_children()`); the activation
    after each named child is a candidate cache layer. Everything after the last cut forms
    the head. Raises ValueError naming the valid children for a name that does not exist.
    """
    children = list(model.named_children())
    names = [n for n, _ in children]
    if not cut_points:
        raise ValueError("at least one cut point is needed")
    positions = []
    for cut in cut_points:
        if cut not in names:
            raise ValueError(
                f"cut point {cut!r} is not a child of {type(model).__name__}; "
                f"valid: {', '.join(names)}"
            )
        positions.append(names.index(cut))
    if positions != sorted(positions) or len(set(positions)) != len(positions):
        raise ValueError(f"cut points must be distinct and in forward order: {list(cut_points)}")
    if positions[-1] == len(children) - 1:
        raise ValueError(f"the last child {names[-1]!r} is the head and cannot be a cut point")
    stages: list[nn.Module] = []
    start = 0
    for pos in [*positions, len(children) - 1]:
        stages.append(nn.Sequential(*(m for _, m in children[start : pos + 1])))
        start = pos + 1
    return StagedModel(arch, stages, cut_points, input_spec, num_classes, preprocess)
