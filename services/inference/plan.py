"""What a plan is on the inference side, and whether a cache service's plan fits the model.

Its own module because everything that narrows a plan (the live guard, the payoff switch)
needs the type, and none of them should depend on the client that fetches it.
"""

from __future__ import annotations

from dataclasses import dataclass

from gati.api import cache_pb2
from gati.models import StagedModel
from gati.probes.serving.reductions import REDUCTIONS, grid


@dataclass(frozen=True)
class ActivePlan:
    """The probes in use for one model: stage index -> (layer name, input reduction)."""

    model: str
    version: int
    layers: dict[int, tuple[str, str]]
    live_labels: bool = False  # the cache service files base labels in a live memory


def check_plan(
    name: str, model: StagedModel, channels: dict[str, int], plan: cache_pb2.Plan
) -> tuple[ActivePlan | None, tuple[str, str] | None]:
    """(the plan to use, None) or (None, (reason, message)) when it does not fit `model`:
    fitted to other weights, an unknown layer or reduction, or a probe that reads another
    width than the model's cut gives (`channels`: cut -> channels)."""
    if plan.model_fingerprint != model.fingerprint():
        return None, (
            "fingerprint",
            f"bundle v{plan.bundle_version} was fitted to "
            f"{plan.model_fingerprint[:12]}, this model is {model.fingerprint()[:12]}",
        )
    layers: dict[int, tuple[str, str]] = {}
    for lp in plan.layers:
        if lp.layer not in model.cut_names or lp.reduction not in REDUCTIONS:
            return None, (
                "layer",
                f"unknown layer {lp.layer!r} or reduction {lp.reduction!r} "
                f"in bundle v{plan.bundle_version}",
            )
        width = channels[lp.layer] * grid(lp.reduction) ** 2
        if lp.input_dim and lp.input_dim != width:  # e.g. a bundle resealed with a wrong probe
            return None, (
                "width",
                f"layer {lp.layer!r} of bundle v{plan.bundle_version} reads {lp.input_dim} "
                f"values; this model's cut gives {width} at {lp.reduction}",
            )
        layers[model.cut_index(lp.layer)] = (lp.layer, lp.reduction)
    return ActivePlan(name, plan.bundle_version, layers, plan.live_labels), None
