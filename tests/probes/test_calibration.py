"""Cascade calibration meets its target on held-out data whose true agreement is known.

Synthetic cascade of two probes: each row's score at each probe is U(0, 1), independent, and
the probe is wrong with probability e(s) = C * (1 - s)^2. With thresholds t1, t2 the true
disagreement is exactly R = C(1-t1)^3/3 + t1 * C(1-t2)^3/3, so every check below compares a
calibrated choice with the truth, not with another estimate.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from gati.probes.fitting.calibration import (
    binomial_p_values,
    calibrate_cascade,
    cascade_errors,
    coverage_at_precision,
    first_exit,
    group_losses,
    hb_p_value,
)

C = 0.3
S = np.array([0.9, 0.5])  # share of latency saved by a hit at each probe


def draw(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    scores = rng.random((n, 2))
    correct = rng.random((n, 2)) >= C * (1 - scores) ** 2
    return scores, correct


def true_risk(t: tuple[float, ...]) -> float:
    t1, t2 = t
    return C * (1 - t1) ** 3 / 3 + t1 * C * (1 - t2) ** 3 / 3


def true_hit_rate(t: tuple[float, ...]) -> float:
    return 1 - t[0] * t[1]


def test_first_exit_and_errors() -> None:
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.1, 0.1]])
    correct = np.array([[False, True], [True, True], [True, True]])
    exits = first_exit(scores, np.array([0.5, 0.5]))
    assert exits.tolist() == [0, 1, -1]
    assert cascade_errors(exits, correct).tolist() == [True, False, False]


def test_hb_p_value_known_values() -> None:
    # zero observed errors in 1000 units, alpha 0.01: Hoeffding gives 0.99^1000
    assert hb_p_value(0.0, 1000, 0.01) == pytest.approx(0.99**1000, rel=1e-6)
    # otherwise the smaller of Hoeffding and Bentkus: e * P(Bin(100, 0.05) <= 1)
    bentkus = math.e * (0.95**100 + 100 * 0.05 * 0.95**99)
    hoeffding = math.exp(-100 * (0.01 * math.log(0.01 / 0.05) + 0.99 * math.log(0.99 / 0.95)))
    assert hb_p_value(0.01, 100, 0.05) == pytest.approx(min(bentkus, hoeffding), rel=1e-6)
    assert hb_p_value(0.02, 500, 0.01) == 1.0  # observed above alpha: never rejected
    assert hb_p_value(0.001, 500, 0.01) < hb_p_value(0.004, 500, 0.01)


def test_empirical_mode_meets_target_on_held_out_data() -> None:
    rng = np.random.default_rng(0)
    scores, correct = draw(20000, rng)
    cal = calibrate_cascade(scores, correct, S, target=0.99, mode="empirical")
    assert cal.agreement >= 0.99
    truth = 1 - true_risk(cal.thresholds)
    # 20000 rows: the empirical choice lands within a few standard errors of the target
    assert truth >= 0.99 - 3 * math.sqrt(0.01 * 0.99 / 20000)
    assert truth <= 0.995  # and does not waste the error budget
    assert true_hit_rate(cal.thresholds) > 0.5
    # the earlier (more saving) probe gets the looser threshold
    assert cal.thresholds[0] < cal.thresholds[1]


def test_ltt_mode_holds_at_its_confidence() -> None:
    """Over many independent calibration sets, P(true agreement < A) <= delta."""
    rng = np.random.default_rng(1)
    delta, target, trials = 0.1, 0.98, 200
    misses, hits = 0, []
    for _ in range(trials):
        scores, correct = draw(1000, rng)
        cal = calibrate_cascade(scores, correct, S, target=target, mode="ltt", delta=delta)
        assert cal.p_value is not None and cal.p_value <= delta
        misses += true_risk(cal.thresholds) > 1 - target
        hits.append(true_hit_rate(cal.thresholds))
    # 200 Bernoulli(<= 0.1) trials: P(more than 30 misses) < 0.5%
    assert misses <= 30
    assert np.mean(hits) > 0.4  # valid *and* useful: it does not simply close the probes


def test_empirical_mode_misses_more_often_than_ltt() -> None:
    """The point of the guarantee mode: the point estimate misses the target about half the
    time on small calibration sets."""
    rng = np.random.default_rng(2)
    emp_miss = ltt_miss = 0
    for _ in range(60):
        scores, correct = draw(1000, rng)
        emp = calibrate_cascade(scores, correct, S, target=0.98, mode="empirical")
        ltt = calibrate_cascade(scores, correct, S, target=0.98, mode="ltt", delta=0.1)
        emp_miss += true_risk(emp.thresholds) > 0.02
        ltt_miss += true_risk(ltt.thresholds) > 0.02
    assert emp_miss >= 15 and ltt_miss <= 6


def test_grouped_calibration_counts_images_not_requests() -> None:
    """Twenty perturbed copies of one image are one piece of evidence, not twenty."""
    rng = np.random.default_rng(3)
    scores, correct = draw(300, rng)
    copies = 20
    rep_scores, rep_correct = np.repeat(scores, copies, 0), np.repeat(correct, copies, 0)
    groups = np.repeat(np.arange(300), copies)
    alone = calibrate_cascade(scores, correct, S, target=0.98, mode="ltt", delta=0.1)
    grouped = calibrate_cascade(
        rep_scores, rep_correct, S, target=0.98, mode="ltt", delta=0.1, groups=groups
    )
    naive = calibrate_cascade(rep_scores, rep_correct, S, target=0.98, mode="ltt", delta=0.1)
    # no more than 300 single requests would allow (those get the exact 0/1 test; a group's
    # loss may be a share, so groups get Hoeffding-Bentkus)
    assert 0 < grouped.lam <= alone.lam
    assert grouped.units == 300 and naive.units == 6000
    assert naive.lam > grouped.lam  # pretending copies are independent is overconfident


def test_group_losses() -> None:
    errors = np.array([True, False, False, True, True])
    groups = np.array([7, 7, 3, 3, 9])
    np.testing.assert_allclose(group_losses(errors, groups), [0.5, 0.5, 1.0])  # groups 3, 7, 9


def test_coverage_at_precision() -> None:
    score = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    correct = np.array([True, True, True, False, False])
    cov, thr = coverage_at_precision(score, correct, 0.99)
    assert cov == pytest.approx(0.6) and thr == pytest.approx(0.6)
    cov, _ = coverage_at_precision(score, correct, 0.75)
    assert cov == pytest.approx(0.8)  # 3 right of the top 4
    assert coverage_at_precision(score, ~correct, 0.99)[0] == 0.0


def test_binomial_p_values_are_exact_for_zero_one_losses() -> None:
    # P(Bin(1000, 0.01) <= 0) and <= 1, by hand
    p0, p1 = 0.99**1000, 0.99**1000 + 1000 * 0.01 * 0.99**999
    np.testing.assert_allclose(binomial_p_values(np.array([0.0, 0.001]), 1000, 0.01), [p0, p1])
    # tighter than Hoeffding-Bentkus, which allows any loss in [0, 1]
    assert binomial_p_values(np.array([5 / 1200]), 1200, 0.01)[0] < hb_p_value(5 / 1200, 1200, 0.01)


def test_ltt_uses_the_exact_test_only_when_losses_are_zero_or_one() -> None:
    """One request per unit: 0/1 losses, exact binomial test (looser thresholds than HB);
    several requests per unit: shares, Hoeffding-Bentkus."""
    rng = np.random.default_rng(4)
    scores, correct = draw(1200, rng)
    exact = calibrate_cascade(scores, correct, S, target=0.99, mode="ltt", delta=0.1)
    singletons = np.arange(1200)
    same = calibrate_cascade(
        scores, correct, S, target=0.99, mode="ltt", delta=0.1, groups=singletons
    )
    assert same.lam == exact.lam
    pairs = calibrate_cascade(
        np.repeat(scores, 2, 0),
        np.repeat(correct, 2, 0),
        S,
        target=0.99,
        mode="ltt",
        delta=0.1,
        groups=np.repeat(singletons, 2),
    )
    assert pairs.units == 1200 and pairs.lam < exact.lam  # HB on the same evidence is stricter
