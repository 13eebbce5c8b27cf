"""Request streams with the temporal locality learned caches feed on (as in the GATI paper).

Every stream is a sequence of images drawn from a dataset; `source` keeps the dataset index
of each request so that evaluation can group errors by image (one image recurs many times,
so its errors are correlated). Names are the same everywhere: uniform, class-locality,
instance-locality, drift, repeats.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

WORKLOADS = ("uniform", "class-locality", "instance-locality", "drift", "repeats")


@dataclass(frozen=True)
class Stream:
    name: str
    images: np.ndarray  # [n, H, W, C] uint8, what the client sends
    source: np.ndarray  # [n] int64, dataset index each request was made from
    phase: np.ndarray  # [n] int64, working-set / class-mix epoch (changes mark drift)

    def __len__(self) -> int:
        return len(self.images)


def perturb(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The same object before the same camera again: flip, shift, brightness, sensor noise."""
    img = image.astype(np.float32)
    if rng.random() < 0.5:
        img = img[:, ::-1]
    dy, dx = rng.integers(-2, 3, size=2)
    h, w = img.shape[:2]
    padded = np.pad(img, ((2, 2), (2, 2), (0, 0)), mode="edge")
    img = padded[2 + dy : 2 + dy + h, 2 + dx : 2 + dx + w]
    img = img * rng.uniform(0.9, 1.1) + rng.normal(0.0, 4.0, size=img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _uniform(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    reps = -(-n // size)
    return np.concatenate([rng.permutation(size) for _ in range(reps)])[:n]


def _class_locality(
    y: np.ndarray,
    n: int,
    rng: np.random.Generator,
    window: int,
    hot: int,
    share: float,
    epoch_every: int | None,
) -> tuple[np.ndarray, np.ndarray]:
    classes = np.unique(y)
    by_class = {c: np.flatnonzero(y == c) for c in classes}
    out = np.empty(n, dtype=np.int64)
    phase = np.empty(n, dtype=np.int64)
    hot_classes = rng.choice(classes, size=hot, replace=False)
    for start in range(0, n, window):
        epoch = start // epoch_every if epoch_every else start // window
        if epoch_every is None or start % epoch_every == 0:
            hot_classes = rng.choice(classes, size=hot, replace=False)
        cold = np.setdiff1d(classes, hot_classes)
        for i in range(start, min(start + window, n)):
            pool = hot_classes if rng.random() < share else cold
            out[i] = rng.choice(by_class[rng.choice(pool)])
            phase[i] = epoch
    return out, phase


def _instance_locality(
    size: int,
    n: int,
    rng: np.random.Generator,
    working_set: int,
    churn_every: int,
    churn: float,
    replace_all_every: int | None,
) -> tuple[np.ndarray, np.ndarray]:
    unused = list(rng.permutation(size))
    ws = [unused.pop() for _ in range(working_set)]
    out = np.empty(n, dtype=np.int64)
    phase = np.zeros(n, dtype=np.int64)
    epoch = 0
    for i in range(n):
        if i and replace_all_every and i % replace_all_every == 0:
            ws = [unused.pop() if unused else int(rng.integers(size)) for _ in ws]
            epoch += 1
        elif i and i % churn_every == 0:
            for slot in rng.choice(working_set, size=round(churn * working_set), replace=False):
                ws[slot] = unused.pop() if unused else int(rng.integers(size))
        out[i] = ws[rng.integers(working_set)]
        phase[i] = epoch
    return out, phase


def make_stream(
    name: str,
    x: np.ndarray,
    y: np.ndarray,
    n: int,
    seed: int = 0,
    *,
    window: int = 500,
    hot_classes: int = 2,
    hot_share: float = 0.9,
    working_set: int = 50,
    churn_every: int = 1000,
    churn: float = 0.1,
    drift_every: int = 2000,
    drift_base: str = "class-locality",
    repeat_share: float = 0.3,
    repeat_recent: int = 100,
) -> Stream:
    """A stream of `n` requests over images `x` (labels `y` pick classes for class mixes)."""
    rng = np.random.default_rng(seed)
    perturbed = False
    phase = np.zeros(n, dtype=np.int64)
    if name == "uniform":
        source = _uniform(n, len(x), rng)
    elif name == "class-locality":
        source, phase = _class_locality(y, n, rng, window, hot_classes, hot_share, None)
    elif name == "instance-locality":
        source, phase = _instance_locality(len(x), n, rng, working_set, churn_every, churn, None)
        perturbed = True
    elif name == "drift":
        if drift_base == "class-locality":
            source, phase = _class_locality(y, n, rng, window, hot_classes, hot_share, drift_every)
        elif drift_base == "instance-locality":
            source, phase = _instance_locality(
                len(x), n, rng, working_set, churn_every, churn, drift_every
            )
            perturbed = True
        else:
            raise ValueError(
                f"drift base must be class-locality or instance-locality: {drift_base}"
            )
    elif name == "repeats":
        fresh = _uniform(n, len(x), rng)
        images = x[fresh].copy()
        source = fresh.copy()
        for i in range(1, n):
            if rng.random() < repeat_share:
                j = int(rng.integers(max(0, i - repeat_recent), i))
                images[i], source[i] = images[j], source[j]
        return Stream(name, images, source, phase)
    else:
        raise ValueError(f"unknown workload {name!r}; valid: {', '.join(WORKLOADS)}")
    images = np.stack([perturb(x[s], rng) for s in source]) if perturbed else x[source]
    return Stream(name, np.ascontiguousarray(images), source.astype(np.int64), phase)
