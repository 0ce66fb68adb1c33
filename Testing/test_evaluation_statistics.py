"""Bootstrap CIs and paired Wilcoxon verdicts (evaluation/statistics.py) on constructed data."""

from __future__ import annotations

import numpy as np
import pytest

from seghirescam.evaluation.statistics import bootstrap_ci, paired_test, verdict


def test_bootstrap_ci_is_seeded_covers_the_mean_and_narrows_with_more_slices():
    rng = np.random.default_rng(0)
    small, large = rng.normal(2.0, 1.0, 10), rng.normal(2.0, 1.0, 400)
    low, high = bootstrap_ci(small, np.random.default_rng(5))
    assert low < small.mean() < high
    assert (low, high) == bootstrap_ci(small, np.random.default_rng(5))
    low_l, high_l = bootstrap_ci(large, np.random.default_rng(5))
    assert high_l - low_l < (high - low) / 3 and low_l < 2.0 < high_l
    assert bootstrap_ci(np.array([4.0, np.nan]), np.random.default_rng(0)) == (4.0, 4.0)
    assert all(np.isnan(bootstrap_ci(np.array([np.nan]), np.random.default_rng(0))))


@pytest.mark.parametrize("higher_is_better", [True, False])
def test_paired_test_finds_a_consistent_shift_and_its_direction(higher_is_better):
    rng = np.random.default_rng(2)
    control = rng.random(30)
    better = control + 0.05 + 0.01 * rng.random(30) if higher_is_better else control - 0.05
    p_better, p_worse, n = paired_test(better, control, higher_is_better=higher_is_better)
    assert n == 30 and p_better < 1e-4 and p_worse > 0.99
    assert verdict(p_better, p_worse) == "yes"
    assert verdict(*paired_test(control, better, higher_is_better=higher_is_better)[:2]) == "no: worse"


def test_paired_test_without_evidence():
    values = np.arange(6.0)
    assert paired_test(values, values, higher_is_better=True) == (1.0, 1.0, 6)
    assert paired_test(np.array([1.0, np.nan]), np.array([0.0, 1.0]), higher_is_better=True)[2] == 1
    rng = np.random.default_rng(4)
    noise = rng.normal(size=40)
    p_better, p_worse, _ = paired_test(noise, rng.normal(size=40), higher_is_better=True)
    assert verdict(p_better, p_worse, alpha=0.001) == "not shown"


def test_the_exact_signed_rank_test_is_scipys_with_ties_and_zeros():
    from scipy import stats

    from seghirescam.evaluation.statistics import signed_rank_exact

    rng = np.random.default_rng(4)
    for _ in range(25):
        n = int(rng.integers(2, 10))
        difference = np.round(rng.normal(size=n), 1)  # ties
        difference[rng.random(n) < 0.2] = 0.0  # and zeros
        if not np.any(difference != 0):
            continue
        expected = [stats.wilcoxon(difference, alternative=side, zero_method="zsplit").pvalue
                    for side in ("greater", "less")]
        assert np.allclose(signed_rank_exact(difference), expected, rtol=0, atol=1e-12), difference
    with pytest.raises(ValueError, match="at most"):
        signed_rank_exact(np.ones(17))
