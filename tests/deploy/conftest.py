"""A test that renders where neither kustomize nor kubectl is installed is skipped, naming the
missing tool; the tests that need no renderer (the structural lint of kustomization_lint, the
resource files validated on their own) still run."""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path

import pytest

from tests.deploy import k8s_checks, kustomize


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A private copy of deploy/k8s to break."""
    return k8s_checks.private_copy(tmp_path)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, object, object]:
    try:
        return (yield)
    except kustomize.NotFound as exc:
        pytest.skip(str(exc))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    try:
        return (yield)
    except kustomize.NotFound as exc:
        pytest.skip(str(exc))
