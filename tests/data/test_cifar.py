"""CIFAR-10 loaders: the official python archive (written here) and refusal of hostile pickles."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

from gati.data import UnsafePickleError, load_cifar10_archive, load_dataset


def _batch(rng: np.random.Generator, n: int) -> tuple[dict, np.ndarray, np.ndarray]:
    images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n)
    # The official layout: each row holds the red plane, then green, then blue (row-major).
    data = images.transpose(0, 3, 1, 2).reshape(n, 3072)
    batch = {
        b"batch_label": b"testing batch 1 of 1",
        b"labels": labels.tolist(),
        b"data": data,
        b"filenames": [f"img{i}.png".encode() for i in range(n)],
    }
    return batch, images, labels


def _write_archive(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, raw in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))


def test_reads_the_official_archive_format(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    members, expected_x, expected_y = {}, [], []
    for name in [
        "data_batch_1",
        "data_batch_2",
        "data_batch_3",
        "data_batch_4",
        "data_batch_5",
        "test_batch",
    ]:
        batch, images, labels = _batch(rng, 7)
        members[name] = pickle.dumps(batch, protocol=2)
        if name != "test_batch":
            expected_x.append(images)
            expected_y.append(labels)
    archive = tmp_path / "cifar-10-python.tar.gz"
    _write_archive(archive, members)
    x, y = load_cifar10_archive(archive, "train")
    np.testing.assert_array_equal(x, np.concatenate(expected_x))
    np.testing.assert_array_equal(y, np.concatenate(expected_y))
    assert x.dtype == np.uint8 and x.shape == (35, 32, 32, 3)
    xt, _yt = load_dataset(archive, start=2, stop=5)
    assert xt.shape == (3, 32, 32, 3)
    # the extracted folder works too
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path, filter="data")
    xd, _ = load_cifar10_archive(tmp_path / "cifar-10-batches-py", "test")
    assert xd.shape == (7, 32, 32, 3)


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_without_running(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    rng = np.random.default_rng(1)
    batch, _, _ = _batch(rng, 2)
    batch[b"filenames"] = _Exploit(marker)
    archive = tmp_path / "evil.tar.gz"
    _write_archive(archive, {"test_batch": pickle.dumps(batch, protocol=2)})
    with pytest.raises(UnsafePickleError, match=r"refusing to load (posix|os)\.system"):
        load_cifar10_archive(archive, "test")
    assert not marker.exists()


def test_wrong_layout_is_a_clear_error(tmp_path: Path) -> None:
    archive = tmp_path / "bad.tar.gz"
    _write_archive(
        archive,
        {
            "test_batch": pickle.dumps(
                {b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]}, protocol=2
            )
        },
    )
    with pytest.raises(ValueError, match=r"shape \[N, 3072\]"):
        load_cifar10_archive(archive, "test")
