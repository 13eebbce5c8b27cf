"""Collect what probes learn from: pool4 activations at every cut and the base model's logits.

The same reduced form the inference service puts on Kafka ("pool4", float16), so offline
fitting sees exactly what the online trainer sees. Running a ResNet-56 over thousands of
images takes minutes on two shared cores, so results can be cached in a directory (npz, no
pickle), keyed by the model's fingerprint and a hash of the images.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from gati.models import StagedModel
from gati.probes.serving.reductions import reduce

log = logging.getLogger(__name__)
LOGITS = "__logits__"


@torch.inference_mode()
def collect(
    model: StagedModel, images: np.ndarray, *, batch: int = 250, progress: bool = False
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """images [N, ...] uint8 -> ({cut: [N, C*16] float16}, logits [N, K] float32)."""
    acts: dict[str, list[np.ndarray]] = {c: [] for c in model.cut_names}
    logits = []
    for start in tqdm(
        range(0, len(images), batch), desc="activations", disable=not progress, leave=False
    ):
        x = torch.from_numpy(np.ascontiguousarray(images[start : start + batch]))
        z, cuts = model.forward_with_cuts(x)
        logits.append(z.float().numpy())
        for name, a in cuts.items():
            acts[name].append(reduce(a, "pool4").numpy().astype(np.float16))
    return {c: np.concatenate(v) for c, v in acts.items()}, np.concatenate(logits)


def cached_collect(
    model: StagedModel,
    images: np.ndarray,
    cache_dir: str | Path | None,
    *,
    batch: int = 250,
    progress: bool = False,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """`collect`, reusing `cache_dir/<fingerprint>-<images hash>.npz` when present."""
    if cache_dir is None:
        return collect(model, images, batch=batch, progress=progress)
    digest = hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()[:20]
    path = Path(cache_dir) / f"{model.fingerprint()[:16]}-{digest}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as f:
            logits = f[LOGITS]
            acts = {c: f[c] for c in model.cut_names}
        log.info("activations from cache %s", path)
        return acts, logits
    acts, logits = collect(model, images, batch=batch, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz")
    os.close(fd)
    np.savez(tmp, **acts, **{LOGITS: logits})
    os.replace(tmp, path)
    return acts, logits
