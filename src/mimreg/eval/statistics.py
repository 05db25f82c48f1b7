"""Statistics over seeds: a group's mean with its 95% interval, the difference of two groups with its
interval, test and verdict, and how many seeds a difference needs. Pure functions on numbers; the
tests and intervals are scipy's (Student's t)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from mimreg.errors import MimregError

LEVEL = 0.95
HIGHER, LOWER, NO_DIFFERENCE, NO_INTERVAL = "higher", "lower", "no difference shown", "no interval (one seed)"
PAIRED, WELCH = "paired t-test", "Welch t-test"


@dataclass(frozen=True)
class GroupStats:
    """Mean, standard deviation (ddof=1), count and 95% interval of the mean; std and interval are
    None for a single value."""

    mean: float
    std: float | None
    n: int
    ci_low: float | None
    ci_high: float | None


@dataclass(frozen=True)
class Difference:
    """`other` minus `baseline`: the difference of means, its 95% interval, the test that gave it
    (None with one seed in a group), its p-value, the number of seeds paired (0: not paired) and the
    verdict, which says what the interval says ("higher": it lies above 0)."""

    diff: float
    ci_low: float | None
    ci_high: float | None
    test: str | None
    p_value: float | None
    n_pairs: int
    verdict: str


def summarize(values: Sequence[float]) -> GroupStats:
    """The mean of `values` with Student's t interval (n - 1 degrees of freedom)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("summarize needs at least one value")
    mean = float(x.mean())
    if x.size == 1:
        return GroupStats(mean, None, 1, None, None)
    if np.ptp(x) == 0:  # scipy's interval is undefined without spread: the mean is known exactly
        return GroupStats(mean, 0.0, int(x.size), mean, mean)
    ci = stats.ttest_1samp(x, 0.0).confidence_interval(LEVEL)
    return GroupStats(mean, float(x.std(ddof=1)), int(x.size), float(ci.low), float(ci.high))


def compare(baseline: Mapping, other: Mapping) -> Difference:
    """`other` against `baseline`, each {seed: value}. Paired t-test on the seeds both have when
    they share two or more (the same seed gives the same initial weights and data order, so pairing
    removes that variance); else Welch's t-test when both have two or more values; else the
    difference of means with no interval."""
    shared = [seed for seed in baseline if seed in other]
    if len(shared) >= 2:
        a = np.array([baseline[s] for s in shared], dtype=np.float64)
        b = np.array([other[s] for s in shared], dtype=np.float64)
        if np.ptp(b - a) == 0:  # every pair differs by the same amount: no spread to test against
            return _exact(float((b - a)[0]), PAIRED, len(shared))
        return _from_scipy(float((b - a).mean()), stats.ttest_rel(b, a), PAIRED, len(shared))
    a = np.array(list(baseline.values()), dtype=np.float64)
    b = np.array(list(other.values()), dtype=np.float64)
    diff = float(b.mean() - a.mean())
    if min(a.size, b.size) < 2:
        return Difference(diff, None, None, None, None, 0, NO_INTERVAL)
    if np.ptp(a) == 0 and np.ptp(b) == 0:
        return _exact(diff, WELCH, 0)
    return _from_scipy(diff, stats.ttest_ind(b, a, equal_var=False), WELCH, 0)


def _from_scipy(diff: float, result, test: str, n_pairs: int) -> Difference:
    ci = result.confidence_interval(LEVEL)
    low, high = float(ci.low), float(ci.high)
    return Difference(diff, low, high, test, float(result.pvalue), n_pairs, verdict(low, high))


def _exact(diff: float, test: str, n_pairs: int) -> Difference:
    return Difference(diff, diff, diff, test, 1.0 if diff == 0 else 0.0, n_pairs, verdict(diff, diff))


def verdict(ci_low: float, ci_high: float) -> str:
    """What a 95% interval of a difference says: above 0, below 0, or containing it."""
    if ci_low > 0:
        return HIGHER
    if ci_high < 0:
        return LOWER
    return NO_DIFFERENCE


def power(n: int, difference: float, spread: float, paired: bool, alpha: float = 1 - LEVEL) -> float:
    """The chance that a two-sided t-test at `alpha` finds `difference` with `n` seeds (noncentral t).
    paired: `spread` is the standard deviation of the per-seed differences (one-sample test on them);
    else it is the standard deviation of one group's values, and each group has `n` seeds."""
    df = n - 1 if paired else 2 * n - 2
    standard_error = spread / math.sqrt(n) if paired else spread * math.sqrt(2 / n)
    shift = abs(difference) / standard_error
    critical = stats.t.ppf(1 - alpha / 2, df)
    return float(stats.nct.sf(critical, df, shift) + stats.nct.cdf(-critical, df, shift))


def seeds_needed(difference: float, spread: float, paired: bool, target: float = 0.8) -> int:
    """The fewest seeds (per group) with which the t-test finds `difference` with chance `target`."""
    if difference == 0 or spread <= 0:
        raise MimregError(f"seeds needed for a difference of {difference} at spread {spread}: give a non-zero "
                          "difference and a positive spread")
    low, high = 1, 2  # power grows with n: double until enough, then halve the gap
    while power(high, difference, spread, paired) < target:
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if power(middle, difference, spread, paired) < target else (low, middle)
    return high
