"""Tests for kdlab.stats.significance: the shared tests and intervals, against hand computations and scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from kdlab.stats.significance import holm, mcnemar_exact, odds_ratio, paired_bootstrap_ci, t_interval


def test_holm_against_hand_table():
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> running max 0.06
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    # NaN stays NaN and is not counted: m = 2
    out = holm([0.2, math.nan, 0.5])
    np.testing.assert_allclose(out[[0, 2]], [0.4, 0.5])
    assert math.isnan(out[1])
    # capped at 1, monotone
    np.testing.assert_allclose(holm([0.6, 0.7]), [1.0, 1.0])
    np.testing.assert_allclose(holm([0.04, 0.04, 0.04]), [0.12, 0.12, 0.12])
    np.testing.assert_allclose(holm([0.001]), [0.001])
    assert holm([]).shape == (0,)


def test_mcnemar_exact_hand_computed():
    # b=8, c=2: two-sided = 2 * P(X <= 2), X ~ Bin(10, 1/2) = 2 * (1 + 10 + 45) / 1024
    assert mcnemar_exact(8, 2) == pytest.approx(112 / 1024)
    assert mcnemar_exact(2, 8) == pytest.approx(112 / 1024)
    # b=5, c=0: 2 * (1/2)^5
    assert mcnemar_exact(5, 0) == pytest.approx(2 / 32)
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(4, 4) == pytest.approx(1.0)


def test_odds_ratio_continuity_rule():
    assert odds_ratio(8, 2) == 4.0
    assert odds_ratio(3, 0) == pytest.approx(3.5 / 0.5)
    assert odds_ratio(0, 0) == 1.0
    assert odds_ratio(0, 4) == pytest.approx(0.5 / 4.5)


def test_bootstrap_ci_contains_difference_is_seeded_and_matches_the_standard_error():
    rng = np.random.default_rng(3)
    sft = rng.uniform(size=400) < 0.5
    kd = sft.copy()
    flip = rng.choice(400, size=60, replace=False)
    kd[flip[:45]] = True
    kd[flip[45:]] = False
    diff = kd.mean() - sft.mean()
    low, high = paired_bootstrap_ci(kd, sft, n_boot=20000, seed=7)
    assert low < diff < high
    assert (low, high) == paired_bootstrap_ci(kd, sft, n_boot=20000, seed=7)
    # the interval lies on a grid of 1/400 steps, so two seeds can agree; five cannot all agree
    assert len({paired_bootstrap_ci(kd, sft, n_boot=2000, seed=s) for s in range(5)}) > 1
    # independent check: the paired normal-approximation interval diff +- 1.96 * sd(d) / sqrt(n)
    d = kd.astype(float) - sft.astype(float)
    se = d.std(ddof=0) / math.sqrt(len(d))
    assert (high - low) == pytest.approx(2 * 1.96 * se, rel=0.08)
    assert (low + high) / 2 == pytest.approx(diff, abs=0.15 * se * 1.96)
    # unpaired resampling would be much wider: the pairing is kept
    unpaired = math.sqrt(kd.var() / 400 + sft.var() / 400)
    assert (high - low) < 2 * 1.96 * unpaired * 0.8


def test_t_interval_edge_cases():
    assert t_interval([0.5, 0.5]) == (0.5, 0.0, 0.5, 0.5, 2)  # sd 0: a zero-width interval, not NaN
    mean, sd, low, high, n = t_interval([0.4, math.nan])
    assert (mean, n) == (0.4, 1) and math.isnan(sd) and math.isnan(low) and math.isnan(high)
    assert t_interval([])[-1] == 0
    mean, sd, low, high, n = t_interval([0.1, 0.3, 0.2])
    assert (low, high) == pytest.approx(stats.t.interval(0.95, 2, loc=0.2, scale=stats.sem([0.1, 0.3, 0.2])))


def test_t_interval_clipped_within_a_range():
    free = t_interval([0.9, 1.0, 1.0])
    mean, sd, low, high, n = t_interval([0.9, 1.0, 1.0], within=(0.0, 1.0))
    assert (mean, sd, low, n) == free[:3] + (3,) and free[3] > 1.0 and high == 1.0
    assert math.isnan(t_interval([0.5], within=(0.0, 1.0))[2])  # one value: no interval, nothing to clip
