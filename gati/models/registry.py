"""Build a served model from an architecture name and a weights path.

Built-in architectures are the CIFAR ResNets. A user's own model is named as
`package.module:function`; the function takes `(weights, device)` and returns a
`StagedModel` (typically built with `gati.models.stage_sequential`).
"""

from __future__ import annotations

import importlib
from pathlib import Path

from gati.models.resnet_cifar import DEPTHS, load_resnet
from gati.models.staged import StagedModel

ARCHITECTURES = tuple(DEPTHS)


def load_model(arch: str, weights: str | Path | None, device: str = "cpu") -> StagedModel:
    """The staged model for `arch`, in eval mode on `device`."""
    if arch in DEPTHS:
        if weights is None:
            raise ValueError(f"{arch} needs a weights path (--weights)")
        return load_resnet(arch, weights, device)
    if ":" in arch:
        module_name, _, func_name = arch.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), func_name)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"cannot load model factory {arch!r}: {exc}") from exc
        model = factory(None if weights is None else str(weights), device)
        if not isinstance(model, StagedModel):
            raise ValueError(f"{arch} returned {type(model).__name__}, expected a StagedModel")
        return model.to(device).eval()
    raise ValueError(
        f"unknown arch {arch!r}; valid: {', '.join(ARCHITECTURES)} or 'package.module:function'"
    )
