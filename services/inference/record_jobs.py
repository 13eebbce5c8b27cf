"""What a request leaves for the trainer: one job per request, one record per batch row.

The engine and shadow completions fill them in, the recorder turns them into activation
records; their own module, so neither side has to import the other for the types.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch


@dataclass
class RowRecord:
    """What the trainer learns from, for one batch row (activations reduced off the path)."""

    row: int
    activations: list[tuple[str, torch.Tensor]]  # (cut name, [C, H, W]) in stage order
    hit: bool
    exit_layer: str
    served_label: int
    bundle_version: int
    base_scores: np.ndarray | None = None
    base_label: int | None = None
    shadow: bool = False


@dataclass
class RecordJob:
    model: str
    request_id: str
    time: float
    rows: list[RowRecord] = field(default_factory=list)
    lookup_rtt_ms: float = 0.0  # see records.proto: feeds the trainer's cost model


class RecordSink(Protocol):
    def submit(self, job: RecordJob) -> bool:
        """Queue a job without blocking; False (and counted) when it had to be dropped."""
        ...
