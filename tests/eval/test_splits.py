import numpy as np
import pytest

from mimreg.errors import MimregError
from mimreg.eval.splits import held_out_split, stratified_fraction

LABELS = np.array([0] * 20 + [1] * 9 + [2] * 1 + [3] * 2)


def test_held_out_split_is_stratified_disjoint_and_seeded():
    fit, held = held_out_split(LABELS, 0.1, seed=0)
    assert np.array_equal(np.sort(np.concatenate([fit, held])), np.arange(len(LABELS)))
    assert np.intersect1d(fit, held).size == 0
    held_counts = {c: int((LABELS[held] == c).sum()) for c in range(4)}
    assert held_counts == {0: 2, 1: 1, 2: 0, 3: 1}  # 10% rounded, at least one; a single row stays in fit
    assert set(LABELS[fit]) == {0, 1, 2, 3}  # every class keeps a training row
    again, _ = held_out_split(LABELS, 0.1, seed=0)
    other, _ = held_out_split(LABELS, 0.1, seed=1)
    assert np.array_equal(fit, again) and not np.array_equal(fit, other)


def test_stratified_fraction_takes_one_percent_per_class_at_least_one():
    labels = np.repeat(np.arange(3), [300, 150, 40])
    chosen = stratified_fraction(labels, 0.01, seed=0)
    assert [int((labels[chosen] == c).sum()) for c in range(3)] == [3, 2, 1]
    assert set(chosen) <= set(stratified_fraction(labels, 0.1, seed=0))  # nested for one seed
    with pytest.raises(MimregError, match="0.01"):
        stratified_fraction(labels, 1.5, seed=0)
