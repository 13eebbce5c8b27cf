"""A test that renders where neither kustomize nor kubectl is installed is skipped, naming the
missing tool; the checks that need no renderer (k8s_checks.kustomization_problems) still run."""

from __future__ import annotations

from collections.abc import Generator

import pytest

from tests.deploy import k8s_checks as k8s


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, object, object]:
    try:
        return (yield)
    except k8s.KustomizeNotFound as exc:
        pytest.skip(str(exc))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    try:
        return (yield)
    except k8s.KustomizeNotFound as exc:
        pytest.skip(str(exc))
