"""Statistics of the evaluation's tables: seeded bootstrap confidence intervals and paired Wilcoxon tests.

Values are per-slice numbers (1D arrays); pairs are the same slices under two maps. No torch; scipy.stats
is imported by the test that needs it.
"""

from __future__ import annotations

import numpy as np

__all__ = ["bootstrap_ci", "paired_test", "verdict", "BOOTSTRAP_RESAMPLES", "ALPHA"]

BOOTSTRAP_RESAMPLES = 2000
ALPHA = 0.05


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
    better = float(stats.wilcoxon(difference, alternative="greater", zero_method="zsplit").pvalue)
    worse = float(stats.wilcoxon(difference, alternative="less", zero_method="zsplit").pvalue)
    return better, worse, n


def verdict(p_better: float, p_worse: float, alpha: float = ALPHA) -> str:
    """Returns: "yes" (a better at level alpha), "no: worse" (b better), or "not shown"."""
    if p_better < alpha:
        return "yes"
    if p_worse < alpha:
        return "no: worse"
    return "not shown"
