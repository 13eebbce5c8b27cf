"""Assemble one layer's manifest entry and tensors (shared by fitting and synthetic bundles).

Tensor names are `<prefix><role>`, with prefix `layers/<cut>/` for an active probe and
`candidates/<cut>/<variant>/` for an inactive one kept for analysis.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from gati.probes.serving.bundle import tensor_spec
from gati.probes.serving.features import NoveltyMemory
from gati.probes.serving.live import LiveRule
from gati.probes.serving.reductions import grid
from gati.probes.serving.selectors import Selector
from gati.probes.serving.variants import spec


def active_prefix(layer: str) -> str:
    return f"layers/{layer}/"


def candidate_prefix(layer: str, variant: str) -> str:
    return f"candidates/{layer}/{variant}/"


def layer_entry(
    layer: str,
    variant: str,
    channels: int,
    predictor_roles: Mapping[str, np.ndarray],
    *,
    prefix: str,
    selector: Selector | None = None,
    memory: NoveltyMemory | None = None,
    threshold: float = 1.0,
    live: LiveRule | None = None,
    extra: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(manifest entry, {full tensor name: array}) for one probe. `live`: the live memory's
    rule, shipped as params "live" {reduction, k, radius} and tensors live_mu, live_scale."""
    # float weights travel as float32; a knn probe's memory keeps float16 keys and int labels
    roles = {
        k: np.asarray(v, dtype=np.float32) if np.asarray(v).dtype == np.float64 else np.asarray(v)
        for k, v in predictor_roles.items()
    }
    param_bytes = int(sum(v.nbytes for v in roles.values()))
    if selector is not None:
        roles.update(selector.tensors())
    memory_bytes = 0
    if memory is not None and variant == "knn":
        memory = None  # its predictor *is* the memory: same tensors, counted once
    if memory is not None:
        mem = memory.tensors()
        memory_bytes = int(sum(v.nbytes for v in mem.values()))
        roles.update(mem)
    if live is not None:
        roles.update(live.tensors())
    tensors = {prefix + k: v for k, v in roles.items()}
    reduction = spec(variant).reduction
    entry: dict[str, Any] = {
        "layer": layer,
        "variant": variant,
        "reduction": reduction,
        "channels": int(channels),
        "input_dim": int(channels * grid(reduction) ** 2),
        "prefix": prefix,
        "param_bytes": param_bytes,
        "memory_bytes": memory_bytes,
        "selector": selector.manifest() if selector is not None else None,
        "novelty": (
            {"reduction": memory.reduction, "k": memory.k, "size": len(memory.labels)}
            if memory is not None
            else {
                "reduction": reduction,
                "k": int(roles["knn_meta"][0]),
                "size": len(roles["mem_labels"]),
            }
            if variant == "knn"
            else None
        ),
        "threshold": float(threshold),
        **({"live": live.manifest()} if live is not None else {}),
        "tensors": {name: tensor_spec(t) for name, t in sorted(tensors.items())},
    }
    entry.update(dict(extra or {}))
    return entry, tensors
