"""A user's own small torch model, staged by naming its cut points (served in a test)."""

from __future__ import annotations

import torch
from torch import nn

from gati.models import StagedModel, stage_sequential
from gati.models.staged import InputSpec


def make_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(8, 16),  # "0"
        nn.ReLU(),  # "1"
        nn.Linear(16, 16),  # "2"
        nn.ReLU(),  # "3"
        nn.Linear(16, 3),  # "4": the head
    )


def build(weights: str | None, device: str) -> StagedModel:
    net = make_net()
    if weights:
        net.load_state_dict(torch.load(weights, map_location=device, weights_only=True))
    return stage_sequential(
        net, ["1", "3"], arch="tiny-mlp", input_spec=InputSpec("FP32", (8,)), num_classes=3
    )
