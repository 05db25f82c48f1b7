"""Means, intervals and differences over seeds, on seeded synthetic results with a known answer."""

import math

import numpy as np
import pytest

from mimreg.errors import MimregError
from mimreg.eval.statistics import (HIGHER, LOWER, NO_DIFFERENCE, NO_INTERVAL, PAIRED, WELCH, compare, power,
                                    seeds_needed, summarize)

T_975_DF4 = 2.776445  # Student's t, 97.5% quantile, 4 degrees of freedom (tables)


def by_seed(values, first_seed=0) -> dict:
    return {first_seed + i: float(v) for i, v in enumerate(values)}


def test_summary_is_mean_sample_std_and_students_t_interval():
    stats = summarize([1.0, 2.0, 3.0, 4.0, 5.0])
    std = math.sqrt(10 / 4)  # squared deviations 4+1+0+1+4 over n-1
    half = T_975_DF4 * std / math.sqrt(5)  # 1.9632
    assert (stats.mean, stats.n) == (3.0, 5)
    assert stats.std == pytest.approx(std, rel=1e-12)
    assert (stats.ci_low, stats.ci_high) == pytest.approx((3 - half, 3 + half), rel=1e-6)
    one = summarize([71.5])
    assert (one.mean, one.std, one.n, one.ci_low, one.ci_high) == (71.5, None, 1, None, None)
    flat = summarize([2.0, 2.0, 2.0])
    assert (flat.std, flat.n, flat.ci_low, flat.ci_high) == (0.0, 3, 2.0, 2.0)  # no spread: the mean is known exactly


def test_a_paired_difference_has_the_interval_of_the_per_seed_differences():
    base, other = by_seed([70.0, 72.0, 71.0, 73.0, 74.0]), by_seed([71.0, 74.5, 71.5, 75.0, 75.0])
    d = np.array([1.0, 2.5, 0.5, 2.0, 1.0])
    half = T_975_DF4 * d.std(ddof=1) / math.sqrt(5)
    result = compare(base, other)
    assert (result.test, result.n_pairs, result.verdict) == (PAIRED, 5, HIGHER)
    assert result.diff == pytest.approx(d.mean(), rel=1e-12)
    assert (result.ci_low, result.ci_high) == pytest.approx((d.mean() - half, d.mean() + half), rel=1e-6)
    assert compare(other, base).verdict == LOWER


def planted(rng, shift, n=10, seeds_shared=True):
    """Two groups of n runs with unit spread, the second `shift` standard deviations higher."""
    base = rng.normal(70.0, 1.0, n)
    other = rng.normal(70.0 + shift, 1.0, n)
    return by_seed(base), by_seed(other, 0 if seeds_shared else n)


@pytest.mark.parametrize("shared", [True, False], ids=["paired", "welch"])
def test_a_planted_difference_of_two_standard_deviations_over_10_seeds_is_found(shared):
    rng = np.random.default_rng(2024)
    results = [compare(*planted(rng, 2.0, seeds_shared=shared)) for _ in range(100)]
    assert {r.test for r in results} == {PAIRED if shared else WELCH}
    found = sum(r.verdict == HIGHER for r in results)
    print(f"planted difference of 2 sd over 10 seeds ({'paired' if shared else 'Welch'}): found in {found}/100")
    # the power of either test here is 0.98-0.99 (paired: the differences' sd is sqrt 2); a miss
    # says "no difference shown", never the wrong direction
    assert found >= 90 and all(r.verdict in (HIGHER, NO_DIFFERENCE) for r in results)
    assert np.mean([r.diff for r in results]) == pytest.approx(2.0, abs=0.15)  # 3 standard errors (0.045)


def test_draws_of_one_distribution_show_no_difference_in_at_least_90_of_100():
    rng = np.random.default_rng(7)
    verdicts = [compare(*planted(rng, 0.0)).verdict for _ in range(100)]
    none_shown = verdicts.count(NO_DIFFERENCE)
    print(f"one distribution, 100 seeded repetitions of 10 seeds: no difference shown in {none_shown}/100")
    assert none_shown >= 90  # expected 95 at the 95% level


def test_pairing_by_seed_removes_the_seed_variance():
    # each seed moves both groups' runs by the same large amount (initial weights, data order);
    # the method adds 1 point with little other noise
    rng = np.random.default_rng(3)
    seed_effect = rng.normal(0.0, 5.0, 8)
    base = by_seed(70.0 + seed_effect + rng.normal(0, 0.3, 8))
    other = by_seed(71.0 + seed_effect + rng.normal(0, 0.3, 8))
    paired = compare(base, other)
    unpaired = compare(base, {f"other-{seed}": value for seed, value in other.items()})  # no seed in common
    assert (paired.test, paired.verdict) == (PAIRED, HIGHER) and paired.ci_low > 0
    assert (unpaired.test, unpaired.verdict) == (WELCH, NO_DIFFERENCE)
    assert paired.diff == pytest.approx(unpaired.diff)  # the same means; only the interval narrows
    assert (paired.ci_high - paired.ci_low) < (unpaired.ci_high - unpaired.ci_low) / 5


def test_only_the_shared_seeds_are_paired():
    base = by_seed([70.0, 71.0, 72.0, 73.0])  # seeds 0-3
    other = by_seed([71.0, 72.5, 73.0, 90.0], first_seed=1)  # seeds 1-4: 1, 2, 3 shared
    result = compare(base, other)
    assert (result.test, result.n_pairs) == (PAIRED, 3)
    assert result.diff == pytest.approx(np.mean([71.0 - 71.0, 72.5 - 72.0, 73.0 - 73.0]))


def test_one_seed_per_group_gives_the_difference_of_means_and_no_interval():
    result = compare({0: 70.0}, {0: 72.5})
    assert (result.diff, result.ci_low, result.ci_high, result.test, result.verdict) == (2.5, None, None, None,
                                                                                        NO_INTERVAL)
    assert compare(by_seed([70.0, 71.0]), {5: 72.5}).verdict == NO_INTERVAL


def test_constant_differences_have_an_exact_interval():
    shifted = compare(by_seed([1.0, 2.0, 3.0]), by_seed([2.0, 3.0, 4.0]))
    assert (shifted.ci_low, shifted.ci_high, shifted.verdict) == (1.0, 1.0, HIGHER)
    assert compare(by_seed([1.0, 2.0]), by_seed([1.0, 2.0])).verdict == NO_DIFFERENCE


SEEDS_NEEDED = {  # spread 1; 80% power, two-sided 5%
    False: {0.5: 64, 1.0: 17, 2.0: 6},  # unpaired: seeds in each group (spread: of one run's value)
    True: {0.5: 34, 1.0: 10, 2.0: 5},  # paired: spread of the per-seed differences
}


@pytest.mark.parametrize("paired", [False, True], ids=["unpaired", "paired"])
def test_seeds_needed_is_the_fewest_that_reach_80_percent_power(paired):
    for difference, seeds in SEEDS_NEEDED[paired].items():
        assert seeds_needed(difference, 1.0, paired) == seeds
        assert power(seeds, difference, 1.0, paired) >= 0.8 > power(seeds - 1, difference, 1.0, paired)
        assert seeds_needed(2 * difference, 2.0, paired) == seeds  # only the ratio matters
    with pytest.raises(MimregError, match="non-zero difference and a positive spread"):
        seeds_needed(1.0, 0.0, paired)


def test_the_power_computed_is_the_share_of_simulated_studies_that_find_the_difference():
    # 10 paired seeds, difference 1 at spread 1 of the differences: power 0.80 by the formula
    rng = np.random.default_rng(11)
    found = 0
    for _ in range(400):
        differences = rng.normal(1.0, 1.0, 10)
        found += compare(by_seed(np.zeros(10)), by_seed(differences)).verdict == HIGHER
    assert power(10, 1.0, 1.0, paired=True) == pytest.approx(0.80, abs=0.01)
    assert found / 400 == pytest.approx(0.80, abs=0.06)  # 3 binomial standard deviations (0.02 each)
