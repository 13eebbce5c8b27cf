"""The training window and the publish policy: pure functions, exact values."""

from __future__ import annotations

import numpy as np
import pytest

from gati import records
from gati.config import ConfigError
from services.trainer.config import TrainerConfig
from services.trainer.learner import Evaluation, decide
from services.trainer.window import ADDED, DUPLICATE, UNLABELLED, Window


def _rec(rid: str, t: float, *, labelled: bool = True, hit: bool = False, row: int = 0):
    act = {"c": records.to_wire(np.ones(16, np.float32), 1)}
    return records.Record(
        "m",
        rid,
        row,
        t,
        act,
        hit=hit,
        base_label=1 if labelled else None,
        base_scores=np.zeros(10, np.float32) if labelled else None,
    )


def test_window_dedupes_counts_unlabelled_and_caps_size() -> None:
    w = Window(max_records=3, max_seconds=100.0)
    assert w.add(_rec("a", 1.0)) == ADDED
    assert w.add(_rec("a", 1.0)) == DUPLICATE  # Kafka re-delivery
    assert w.add(_rec("a", 1.0, row=1)) == ADDED  # another row of the same request
    assert w.add(_rec("b", 2.0, labelled=False, hit=True)) == UNLABELLED
    assert w.add(_rec("b", 2.0, hit=True)) == ADDED  # its shadow-completed twin carries a label
    assert w.add(_rec("c", 3.0)) == ADDED
    assert [r.key for r in w.records()] == [("a", 1), ("b", 0), ("c", 0)]  # oldest fell out
    s = w.stats()
    assert (s.size, s.new, s.newest) == (3, 4, 3.0)
    assert s.hit_rate == pytest.approx(2 / 5)
    w.mark_trained()
    assert w.stats().new == 0


def test_window_ages_out_by_record_time() -> None:
    w = Window(max_records=100, max_seconds=10.0)
    for i in range(5):
        w.add(_rec(f"r{i}", float(i * 4)))  # times 0, 4, 8, 12, 16
    assert [r.request_id for r in w.records()] == ["r2", "r3", "r4"]  # >= 16 - 10


def _ev(agreement: float, speedup: float, layers: int = 2) -> Evaluation:
    return Evaluation(1000, agreement, 0.5, speedup, layers)


@pytest.mark.parametrize(
    ("candidate", "current", "publish", "why"),
    [
        (_ev(0.985, 3.0), None, False, "< target"),
        (_ev(0.995, 1.5), None, True, "first bundle"),
        (_ev(0.995, 1.01, layers=0), None, False, "too small"),
        (_ev(0.995, 1.2), _ev(0.98, 2.0), True, "current agreement"),
        (_ev(0.995, 1.5), _ev(0.995, 1.49), False, "does not beat"),
        (_ev(0.995, 1.6), _ev(0.995, 1.5), True, "1.500x -> 1.600x"),
        (_ev(0.989, 5.0), _ev(0.995, 1.5), False, "< target"),
    ],
)
def test_publish_only_when_better(candidate, current, publish, why) -> None:
    ok, reason = decide(candidate, current, target=0.99, min_gain=0.02)
    assert ok is publish and why in reason


def test_config_validates_and_builds_fit_config() -> None:
    c = TrainerConfig(model="m", arch="resnet20", variants=("linear",), epochs=5, margin=0.002)
    fit = c.fit_config()
    assert fit.variants == ("linear",) and fit.epochs == 5 and fit.margin == 0.002
    assert fit.layers is None and fit.agreement_target == 0.99
    with pytest.raises(ConfigError, match="variants"):
        TrainerConfig(variants=("resnet",))
    with pytest.raises(ConfigError, match="min_records"):
        TrainerConfig(min_records=10)
    with pytest.raises(ConfigError, match="lookup_mode"):
        TrainerConfig(lookup_mode="carrier-pigeon")
    with pytest.raises(ConfigError, match="min_gain"):
        TrainerConfig(min_gain=-0.1)  # the publish bar; the plan's own is plan_min_gain
    assert TrainerConfig(min_gain=0.5).fit_config().plan_min_gain == 0.01
