"""Hand-computed checks of the probe scores: average ranks, Spearman with ties, macro F1."""
import math

import numpy as np
import pytest

from helm_scale.evaluate.probes.scores import (
    accuracy,
    average_ranks,
    macro_f1,
    mean_std,
    per_class_f1,
    spearman,
)


def test_average_ranks_share_tied_positions():
    # sorted: 10 10 | 20 20 20 | 30 -> ranks 1.5 1.5 | 4 4 4 | 6
    assert average_ranks([10, 20, 10, 30, 20, 20]).tolist() == [1.5, 4, 1.5, 6, 4, 4]
    assert average_ranks([3.0, 1.0, 2.0]).tolist() == [3, 1, 2]


def test_spearman_with_ties_by_hand():
    # ranks x: 1 2 3 4 5, y: 1 2 3.5 5 3.5; centred: dx = -2 -1 0 1 2, dy = -2 -1 .5 2 .5
    # sum dx dy = 8, sum dx^2 = 10, sum dy^2 = 9.5 -> rho = 8 / sqrt(95)
    assert spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(8 / math.sqrt(95), abs=1e-12)


def test_spearman_monotone_reversed_and_undefined():
    assert spearman([1, 2, 3, 4], [1, 10, 100, 1000]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [9, 7, 5, -1]) == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 2, 3], [4, 4, 4]))  # a constant side has no ranking
    assert math.isnan(spearman([1], [2]))
    with pytest.raises(ValueError):
        spearman([1, 2], [1, 2, 3])


def test_spearman_matches_scipy_on_many_ties():
    stats = pytest.importorskip("scipy.stats", reason="scipy is only the cross-check")
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 5, 200), rng.integers(0, 7, 200) + rng.integers(0, 5, 200) // 2
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)


def test_macro_f1_by_hand():
    true, pred = [0, 0, 1, 1, 2], [0, 1, 1, 1, 0]
    # class 0: TP 1, FP 1, FN 1 -> 0.5; class 1: TP 2, FP 1 -> 0.8; class 2: TP 0, FN 1 -> 0
    assert per_class_f1(true, pred) == {0: 0.5, 1: 0.8, 2: 0.0}
    assert macro_f1(true, pred) == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert accuracy(true, pred) == pytest.approx(3 / 5)
    # A class in neither array is left out by default, scored 0 when asked for.
    assert macro_f1([0, 1], [0, 1]) == 1.0
    assert macro_f1([0, 1], [0, 1], labels=[0, 1, 2]) == pytest.approx(2 / 3)


def test_mean_std_over_seeds():
    assert mean_std([0.5]) == (0.5, 0.0)
    m, s = mean_std([1.0, 2.0, 3.0, math.nan])
    assert (m, s) == (2.0, pytest.approx(1.0))  # sample std, NaN ignored
