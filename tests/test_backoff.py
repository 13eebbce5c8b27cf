"""The one backoff: doubling delays up to a cap, a not-before deadline for polled loops."""

from __future__ import annotations

import time

from services.common.backoff import Backoff


def test_delays_double_up_to_the_cap_and_start_again_after_reset() -> None:
    backoff = Backoff(0.5, 5.0)
    assert [backoff.next() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    backoff.reset()
    assert backoff.next() == 0.5


def test_a_failure_holds_off_the_next_try_for_its_delay() -> None:
    backoff = Backoff(30.0, 100.0)  # delays far longer than any stall of a loaded machine
    assert backoff.ready()  # nothing failed yet
    before = time.monotonic()
    assert backoff.failed() == 30.0
    assert not backoff.ready()
    assert backoff.not_before >= before + 30.0
    backoff.not_before = time.monotonic() - 0.001  # as if the delay had passed
    assert backoff.ready()
    assert backoff.failed() == 60.0  # the next failure waits twice as long
    assert not backoff.ready()
    backoff.reset()
    assert backoff.ready() and backoff.next() == 30.0
