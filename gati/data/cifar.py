"""Load CIFAR-10 images as (x [N, 32, 32, 3] uint8 RGB, y [N] int64).

Two formats: the npz files of gati's assets (keys `x`, `y`), and the official
"CIFAR-10 python version" archive users download (`cifar-10-python.tar.gz`, or its
extracted `cifar-10-batches-py/` folder). The archive is a set of pickles: a downloaded
file is untrusted, so it is read with an unpickler that admits only the plain types that
format uses and refuses everything else before anything runs.
"""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np

ARCHIVE_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCHES = ("test_batch",)

# The only globals a CIFAR-10 batch pickle refers to: numpy's array reconstruction, and
# `_codecs.encode`, which protocol-2 pickles written by Python 3 use to spell bytes.
_ALLOWED_GLOBALS = {
    ("_codecs", "encode"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class UnsafePickleError(ValueError):
    """A pickle asked for something outside the CIFAR-10 format: refused, nothing ran."""


class _CifarUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise UnsafePickleError(
                f"refusing to load {module}.{name}: a CIFAR-10 batch holds only plain types "
                "and numpy arrays"
            )
        return super().find_class(module, name)


def _load_batch(raw: bytes, source: str) -> tuple[np.ndarray, np.ndarray]:
    batch = _CifarUnpickler(io.BytesIO(raw), encoding="bytes").load()
    if not isinstance(batch, dict):
        raise ValueError(f"{source}: expected a dict, got {type(batch).__name__}")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"{source}: 'data' must be a uint8 array of shape [N, 3072]")
    if labels is None or len(labels) != data.shape[0]:
        raise ValueError(f"{source}: 'labels' must have one entry per row of 'data'")
    # Each row: 1024 red, 1024 green, 1024 blue values, each plane row-major 32x32.
    x = data.astype(np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(x), np.asarray(labels, dtype=np.int64)


def load_cifar10_archive(path: str | Path, split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of `split` ("train" or "test") from the official python archive."""
    names = {"train": TRAIN_BATCHES, "test": TEST_BATCHES}.get(split)
    if names is None:
        raise ValueError(f"unknown split {split!r}; valid: train, test")
    path = Path(path)
    raws: list[tuple[str, bytes]] = []
    if path.is_dir():
        folder = path / ARCHIVE_DIR if (path / ARCHIVE_DIR).is_dir() else path
        for name in names:
            raws.append((name, (folder / name).read_bytes()))
    elif path.is_file():
        with tarfile.open(path, "r:*") as tar:
            for name in names:
                member = tar.getmember(f"{ARCHIVE_DIR}/{name}")
                handle = tar.extractfile(member)
                if handle is None:
                    raise ValueError(f"{path}: {member.name} is not a regular file")
                raws.append((name, handle.read()))
    else:
        raise FileNotFoundError(f"CIFAR-10 archive not found: {path}")
    parts = [_load_batch(raw, f"{path}:{name}") for name, raw in raws]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def load_npz(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels from an npz with `x` [N, 32, 32, 3] uint8 and `y` [N] (no pickle)."""
    with np.load(Path(path), allow_pickle=False) as f:
        x, y = f["x"], f["y"].astype(np.int64)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"{path}: 'x' must be uint8 [N, H, W, 3], got {x.dtype} {x.shape}")
    return x, y


def load_dataset(
    path: str | Path, start: int = 0, stop: int | None = None, split: str = "test"
) -> tuple[np.ndarray, np.ndarray]:
    """Rows start..stop of an npz file or a CIFAR-10 python archive (file or folder)."""
    p = Path(path)
    x, y = load_npz(p) if p.suffix == ".npz" else load_cifar10_archive(p, split)
    if not 0 <= start < len(x):
        raise ValueError(f"--start {start} outside the {len(x)} images of {p}")
    return x[start:stop], y[start:stop]
