"""RowStates: one state per (model, request, row), LRU-bounded, expiring."""

from __future__ import annotations

from services.cache.states import RowStates


def test_same_row_same_state_other_rows_fresh() -> None:
    states = RowStates(capacity=10, ttl_s=5.0)
    a0, a1 = states.get("m", "a", [0, 1], now=0.0)
    a0.prev_label = 3
    again = states.get("m", "a", [1, 0], now=1.0)
    assert again[1] is a0 and again[0] is a1
    assert states.get("m", "b", [0], now=1.0)[0] is not a0
    assert states.get("other", "a", [0], now=1.0)[0] is not a0
    assert len(states) == 4


def test_capacity_drops_least_recently_used() -> None:
    states = RowStates(capacity=3, ttl_s=100.0)
    first = states.get("m", "r1", [0], now=0.0)[0]
    states.get("m", "r2", [0], now=1.0)
    states.get("m", "r3", [0], now=2.0)
    assert states.get("m", "r1", [0], now=3.0)[0] is first  # touched: now the most recent
    states.get("m", "r4", [0], now=4.0)  # over capacity: r2 (least recent) goes
    assert len(states) == 3
    assert states.get("m", "r1", [0], now=5.0)[0] is first
    assert states.get("m", "r2", [0], now=6.0)[0].prev_label == -1


def test_expired_states_start_fresh_and_are_dropped() -> None:
    states = RowStates(capacity=100, ttl_s=10.0)
    old = states.get("m", "r", [0], now=0.0)[0]
    old.prev_label = 7
    assert states.get("m", "r", [0], now=10.0)[0] is old  # at the limit: still alive
    fresh = states.get("m", "r", [0], now=20.5)[0]
    assert fresh is not old and fresh.prev_label == -1
    for i in range(5):
        states.get("m", f"x{i}", [0], now=21.0)
    states.get("m", "late", [0], now=40.0)  # everything touched at <= 21 is past its ttl
    assert len(states) == 1
