"""Datasets: CIFAR-10 in the npz form of the assets and the official python-pickle archive."""

from gati.data.cifar import UnsafePickleError, load_cifar10_archive, load_dataset, load_npz

__all__ = ["UnsafePickleError", "load_cifar10_archive", "load_dataset", "load_npz"]
