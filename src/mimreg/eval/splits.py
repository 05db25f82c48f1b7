"""Seeded stratified subsets of a labelled split (low-shot sets, held-out sets, 1%-label fine-tuning)."""

from __future__ import annotations

import math

import numpy as np

from mimreg.errors import MimregError


def indices_by_class(labels) -> dict[int, np.ndarray]:
    """Class -> the indices of its rows, classes in increasing order."""
    labels = np.asarray(labels)
    return {int(c): np.flatnonzero(labels == c) for c in np.unique(labels)}


def fraction_counts(by_class: dict[int, np.ndarray], fraction: float) -> dict[int, int]:
    """round(fraction x class size) per class, at least one (MSN's and MI-MAE's 1% subsets)."""
    if not 0 < fraction <= 1:
        raise MimregError(f"fraction must lie in (0, 1], got {fraction!r}; 1% is 0.01")
    return {c: max(1, math.floor(fraction * idx.size + 0.5)) for c, idx in by_class.items()}


def take_per_class(by_class: dict[int, np.ndarray], counts: dict[int, int], seed: int) -> np.ndarray:
    """Seeded stratified subset: the first counts[c] of a per-class permutation, sorted.

    One generator per seed, drawn in class order, so for a fixed seed a smaller subset is
    contained in a larger one (1-shot within 2-shot within 5-shot; 1% within 10%).
    """
    rng = np.random.default_rng(seed)
    picked = [rng.permutation(indices)[: counts[c]] for c, indices in by_class.items()]
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)


def stratified_fraction(labels, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of a seeded stratified `fraction` of the rows (at least one per class)."""
    by_class = indices_by_class(labels)
    return take_per_class(by_class, fraction_counts(by_class, fraction), seed)


def held_out_split(labels, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit, held_out) sorted index arrays: `fraction` of every class with two or more rows held
    out (at least one row), classes with a single row kept whole in the fit part."""
    by_class = indices_by_class(labels)
    counts = {c: min(max(1, math.floor(fraction * idx.size + 0.5)), idx.size - 1) for c, idx in by_class.items()}
    held = take_per_class(by_class, counts, seed)
    fit = np.setdiff1d(np.arange(len(np.asarray(labels))), held)
    return fit, held
