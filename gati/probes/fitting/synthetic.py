"""Valid bundles with random probes, for tests and demos of the services (no training).

The probes answer at random, so they say nothing about any model; what they exercise is the
contract: manifest, tensors, verification, runtime lookups, reductions and thresholds.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from gati.probes.fitting.entries import active_prefix, layer_entry
from gati.probes.serving.bundle import Bundle
from gati.probes.serving.features import NoveltyMemory, feature_names, memory_reduction
from gati.probes.serving.reductions import grid
from gati.probes.serving.selectors import Selector, max_softmax
from gati.probes.serving.variants import Predictor, spec


def random_roles(
    variant: str,
    channels: int,
    num_classes: int,
    rng: np.random.Generator,
    *,
    hidden: int = 32,
    filters: int = 8,
) -> dict[str, np.ndarray]:
    """Random predictor tensors of the right shapes for `variant`."""
    d = channels * grid(spec(variant).reduction) ** 2
    roles = {"in_mu": np.zeros(d, np.float32), "in_scale": np.ones(d, np.float32)}

    def r(*shape: int) -> np.ndarray:
        return rng.normal(0.0, 0.3, size=shape).astype(np.float32)

    if variant == "linear":
        roles.update(w=r(num_classes, d), b=r(num_classes))
    elif variant == "mlp":
        roles.update(w1=r(hidden, d), b1=r(hidden), w2=r(num_classes, hidden), b2=r(num_classes))
    elif variant == "conv":
        roles.update(
            wc=r(filters, channels, 3, 3),
            bc=r(filters),
            w=r(num_classes, filters * 4),
            b=r(num_classes),
        )
    else:  # knn: a random memory of 64 requests
        roles = {
            "mem_keys": rng.normal(size=(64, d)).astype(np.float16),
            "mem_labels": rng.integers(0, num_classes, 64).astype(np.int32),
            "mem_mu": np.zeros(d, np.float32),
            "mem_scale": np.ones(d, np.float32),
            "knn_meta": np.array([5, num_classes], np.int32),
        }
    Predictor(variant, channels, roles)  # shape check
    return roles


def random_bundle(
    layers: Mapping[str, tuple[str, int]],
    *,
    model_id: str = "resnet20",
    arch: str = "resnet20",
    fingerprint: str = "0" * 32,
    version: int = 1,
    num_classes: int = 10,
    threshold: float = 0.5,
    selector: str = "max-softmax",
    memory_size: int = 0,
    gate: float | None = None,
    seed: int = 0,
) -> Bundle:
    """A sealed bundle with one random probe per layer. `layers`: cut -> (variant, channels),
    in stage order. `selector="logistic"` adds a random learned selector, with a novelty
    memory of `memory_size` random entries when that is > 0 (and a familiarity `gate` on the
    log distance, if given)."""
    rng = np.random.default_rng(seed)
    entries, tensors = [], {}
    for layer, (variant, channels) in layers.items():
        roles = random_roles(variant, channels, num_classes, rng)
        memory = None
        if memory_size > 0:
            red = memory_reduction(spec(variant).reduction, "pool2")
            d = channels * grid(red) ** 2
            memory = NoveltyMemory(
                rng.normal(size=(memory_size, d)).astype(np.float16),
                rng.integers(0, num_classes, memory_size),
                np.zeros(d, np.float32),
                np.ones(d, np.float32),
                channels=channels,
                reduction=red,
                k=5,
            )
        if selector == "logistic":
            names = feature_names(
                num_classes, prev=True, novelty=memory is not None or variant == "knn", classes=True
            )
            w = rng.normal(size=len(names)).astype(np.float32)
            sel = Selector("logistic", names, w, 0.0, gate if memory is not None else None)
        else:
            sel = max_softmax()
        entry, t = layer_entry(
            layer,
            variant,
            channels,
            roles,
            prefix=active_prefix(layer),
            selector=sel,
            memory=memory,
            threshold=threshold,
        )
        entries.append(entry)
        tensors.update(t)
    return Bundle.create(
        model_id=model_id,
        arch=arch,
        model_fingerprint=fingerprint,
        layers=entries,
        tensors=tensors,
        version=version,
        num_classes=num_classes,
    )
