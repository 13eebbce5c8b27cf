"""Fixtures of the reliability suite: one live stack per session, and the figures it reports.

Run it with `pytest tests/reliability -q -s` (-s shows each test's own line of figures); about
three minutes on two cores, ResNet-20. GATI_SOAK_SECONDS / GATI_SOAK_CLIENTS lengthen the soak.
The figures live in pytest's config stash, so `pytest_terminal_summary` prints them at the end
of the run, after the stack is down, passed or failed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.stack import local_stack
from gati.data import load_npz
from gati.models import load_model
from tests.reliability.figures import Figures
from tests.reliability.load import wait_until
from tests.reliability.rig import (
    ARCH,
    CACHE_ARGS,
    INFERENCE_ARGS,
    MODEL,
    TRAINER_ARGS,
    Rig,
    unaccounted,
)

FIGURES = pytest.StashKey[Figures]()


@pytest.fixture(scope="session")
def figures(request: pytest.FixtureRequest) -> Figures:
    return request.config.stash.setdefault(FIGURES, Figures())


@pytest.fixture(scope="session")
def rig(
    tmp_path_factory: pytest.TempPathFactory,
    assets: Path,
    resnet20_weights: Path,
    figures: Figures,
) -> Iterator[Rig]:
    """The whole stack, healthy, with a good bundle (v1) in use; stopped after the session."""
    images = load_npz(assets / "cifar10" / "test.npz")[0][:64]
    weights = str(resnet20_weights)
    with local_stack(
        tmp_path_factory.mktemp("stack"),
        MODEL,
        ARCH,
        weights,
        kafka=True,
        trainer=True,
        inference_args=INFERENCE_ARGS,
        cache_args=CACHE_ARGS,
        trainer_args=TRAINER_ARGS,
    ) as stack:
        rig = Rig(stack, images, load_model(ARCH, weights).fingerprint(), figures)
        rig.wait_version(rig.publish(seed=1))
        yield rig
        with contextlib.suppress(Exception):  # a test may have left a service down
            wait_until(lambda: unaccounted(rig.records()) == 0, 15, "records settled")
        with contextlib.suppress(Exception):
            figures.records = rig.records()


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    found = config.stash.get(FIGURES, None)
    if found is None:
        return
    terminalreporter.section("gati reliability figures")
    for line in found.lines():
        terminalreporter.write_line(line)
