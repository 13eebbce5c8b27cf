"""The trainer's cost model follows the lookup round trips the inference service measured."""

from __future__ import annotations

import numpy as np

from gati import records
from services.inference.cache_client import PendingLookup, round_trip_ms
from services.trainer.learner import measured_rtt_ms


def _rec(rtt: float) -> records.Record:
    return records.Record(model="m", request_id="r", row=0, time=0.0, lookup_rtt_ms=rtt)


def test_measured_rtt_is_the_mean_once_there_are_enough() -> None:
    window = [_rec(r) for r in np.linspace(0.2, 1.0, 100)] + [_rec(0.0)] * 50
    assert abs(measured_rtt_ms(window, default=0.3) - 0.6) < 1e-9  # rows of 0: skipped
    assert measured_rtt_ms(window[:10], default=0.3) == 0.3  # too few: the default
    assert measured_rtt_ms([_rec(0.0)] * 200, default=0.3) == 0.3  # no lookups at all


def test_round_trip_counts_unanswered_lookups_with_their_wait() -> None:
    answered = PendingLookup(None, 1, "m", "l", 0, np.zeros(1, np.int32))  # type: ignore[arg-type]
    waiting = PendingLookup(None, 2, "m", "l", 1, np.zeros(1, np.int32))  # type: ignore[arg-type]
    answered.sent_at, answered.replied_at = 10.0, 10.0004
    waiting.sent_at = 10.0
    assert abs(round_trip_ms([answered, waiting], now=10.002) - 1.2) < 1e-9
    assert round_trip_ms([], now=1.0) == 0.0
