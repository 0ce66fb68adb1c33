"""Statistics of the evaluation's tables: seeded bootstrap confidence intervals and paired Wilcoxon tests.

Values are per-slice numbers (1D arrays); pairs are the same slices under two maps. No torch; scipy.stats
is imported by the test that needs it.
"""

from __future__ import annotations

import numpy as np

__all__ = ["bootstrap_ci", "paired_test", "signed_rank_exact", "verdict", "BOOTSTRAP_RESAMPLES", "ALPHA",
           "EXACT_MAX_PAIRS"]

BOOTSTRAP_RESAMPLES = 2000
ALPHA = 0.05
EXACT_MAX_PAIRS = 16  # up to here the signed-rank test is exact over all 2^n sign flips (65536 x 16 at most)


def bootstrap_ci(values: np.ndarray, rng: np.random.Generator, *, resamples: int = BOOTSTRAP_RESAMPLES,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean.

    Args:
        values: (n,) per-slice values; NaN are left out.
        rng: The only source of chance (seed it: the same state gives the same interval).
        resamples: Bootstrap resamples.
        level: Coverage, e.g. 0.95.

    Returns:
        (low, high); (NaN, NaN) without finite values; (v, v) for a single value.
    """
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    means = values[rng.integers(0, values.size, size=(resamples, values.size))].mean(1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def paired_test(a: np.ndarray, b: np.ndarray, *, higher_is_better: bool) -> tuple[float, float, int]:
    """One-sided paired Wilcoxon signed-rank tests of "a is better than b" and "b is better than a".

    Args:
        a, b: (n,) paired per-slice values; pairs with a NaN are dropped.
        higher_is_better: The metric's direction.

    Returns:
        (p that a is better, p that b is better, number of pairs). With fewer than 2 pairs, or all
        differences zero, both p are 1.0 (no evidence either way).
    """
    from scipy import stats  # here, so the report's module imports without scipy.stats (and its torch probe)

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    keep = np.isfinite(a) & np.isfinite(b)
    difference = (a - b)[keep] if higher_is_better else (b - a)[keep]
    n = int(keep.sum())
    if n < 2 or not np.any(difference != 0):
        return 1.0, 1.0, n
    if n <= EXACT_MAX_PAIRS:
        better, worse = signed_rank_exact(difference)
        return better, worse, n
    better = float(stats.wilcoxon(difference, alternative="greater", zero_method="zsplit").pvalue)
    worse = float(stats.wilcoxon(difference, alternative="less", zero_method="zsplit").pvalue)
    return better, worse, n


def signed_rank_exact(difference: np.ndarray) -> tuple[float, float]:
    """Exact one-sided p-values of the Wilcoxon signed-rank statistic (zeros split), over every sign flip.

    What ``scipy.stats.wilcoxon(..., zero_method="zsplit")`` computes for small samples with ties or zeros
    (there it runs a permutation test over all 2^n sign flips, seconds per call at n = 13); here the 2^n
    statistics are one matrix product.

    Args:
        difference: (n,) finite paired differences, n <= ``EXACT_MAX_PAIRS``.

    Returns:
        (p that the differences are shifted above 0, p that they are shifted below 0).

    Raises:
        ValueError: If n > ``EXACT_MAX_PAIRS``.
    """
    from scipy.stats import rankdata

    difference = np.asarray(difference, dtype=np.float64)
    if difference.size > EXACT_MAX_PAIRS:
        raise ValueError(f"{difference.size} pairs: the exact test enumerates 2^n flips, at most {EXACT_MAX_PAIRS}")
    ranks = rankdata(np.abs(difference))
    zero = difference == 0
    shared = 0.5 * ranks[zero].sum()  # zsplit: a zero's rank counts half to each side, whatever the flip
    free = ranks[~zero]
    observed = ranks[difference > 0].sum() + shared
    flips = (np.arange(2 ** free.size)[:, None] >> np.arange(free.size)) & 1  # (2^m, m) every sign pattern
    statistics = flips @ free + shared
    tolerance = 1e-9 * max(1.0, float(ranks.sum()))
    return float(np.mean(statistics >= observed - tolerance)), float(np.mean(statistics <= observed + tolerance))


def verdict(p_better: float, p_worse: float, alpha: float = ALPHA) -> str:
    """Returns: "yes" (a better at level alpha), "no: worse" (b better), or "not shown"."""
    if p_better < alpha:
        return "yes"
    if p_worse < alpha:
        return "no: worse"
    return "not shown"
