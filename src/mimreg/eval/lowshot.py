"""MSN low-shot evaluation: logistic regression on a few labelled images per class."""

from __future__ import annotations

import numpy as np

from mimreg.errors import MimregError
from mimreg.feature_checks import check_split
from mimreg.eval.splits import fraction_counts, indices_by_class, take_per_class

CENTERINGS = ("train_mean", "row")


def _preprocess(x: np.ndarray, mean: np.ndarray | None) -> np.ndarray:
    """Subtract `mean` (or each row's own mean when None), then L2-normalise each row."""
    x = x - (x.mean(axis=1, keepdims=True) if mean is None else mean)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def _fraction_key(fraction: float) -> str:
    return f"{fraction * 100:g}pct"


def _fit_and_score(x, y, test_x, test_y, chosen, *, C, max_iter, tol, centering) -> float:
    from sklearn.linear_model import LogisticRegression

    train = x[chosen].double().numpy()
    mean = train.mean(axis=0) if centering == "train_mean" else None
    classifier = LogisticRegression(C=C, fit_intercept=False, max_iter=max_iter, tol=tol, solver="lbfgs")
    classifier.fit(_preprocess(train, mean), y[chosen])
    predictions = classifier.predict(_preprocess(test_x, mean))
    return 100.0 * float(np.mean(predictions == test_y))


def lowshot_logistic(
    train_x,
    train_y,
    test_x,
    test_y,
    *,
    shots=(1, 2, 5),
    fractions=(0.01, 0.1),
    seeds=(0, 1, 2),
    C: float = 400.0,
    max_iter: int = 1000,
    tol: float = 1e-4,
    centering: str = "train_mean",
) -> dict:
    """Low-shot top-1 (percent) of L2-regularised multinomial logistic regression, MSN protocol.

    For each seed, a stratified labelled subset is drawn from the training features: `shots`
    images per class, or round(fraction x class size) per class (at least 1). Features are
    centred with the mean of that labelled subset (centering="train_mean"; "row" subtracts
    each row's own mean, as MSN's cyanure preprocessing does), L2-normalised per row, and fit
    with scikit-learn's lbfgs without intercept, as MSN does. C=400 is MSN's lambd=0.0025:
    MSN hands lambd/n to cyanure, whose objective mean(loss) + (lambd/n)/2 |W|^2 is, times n,
    sum(loss) + lambd/2 |W|^2; sklearn minimises C sum(loss) + 1/2 |W|^2, so C = 1/lambd.
    Computed in float64 for a stable lbfgs.

    Returns {"1_per_class": {"mean", "std", "runs", "n_labelled"}, ..., "1pct": ..., "10pct": ...};
    std is the population std (ddof=0) over seeds, so a single seed gives 0.
    """
    if centering not in CENTERINGS:
        raise MimregError(f"unknown centering {centering!r}; use one of {CENTERINGS}")
    if len(seeds) == 0:
        raise MimregError("seeds is empty; pass at least one seed, e.g. seeds=(0, 1, 2)")
    if not C > 0:
        raise MimregError(f"C must be positive, got {C}")
    for s in shots:
        if int(s) != s or s < 1:
            raise MimregError(f"shots must be positive integers, got {s!r}")
    for f in fractions:
        if not 0 < f <= 1:
            raise MimregError(f"fractions must lie in (0, 1], got {f!r}; 1% is 0.01")
    train_x, train_y, test_x, test_y, _ = check_split(train_x, train_y, test_x, test_y)
    x = train_x  # rows are taken (and made float64) per fit: the train split may be memory-mapped
    y = train_y.numpy()
    tx = test_x.double().numpy()
    ty = test_y.numpy()

    classes = np.unique(y)
    if classes.size < 2:
        raise MimregError(f"train_y holds a single class ({classes[0]}); logistic regression needs at least 2")
    by_class = indices_by_class(y)

    settings: list[tuple[str, dict[int, int]]] = []
    for s in shots:
        s = int(s)
        short = [(c, idx.size) for c, idx in by_class.items() if idx.size < s]
        if short:
            c, size = short[0]
            raise MimregError(
                f"class {c} has {size} training images but shots={s} asks for {s} per class "
                f"({len(short)} classes are short); lower shots or drop those classes"
            )
        settings.append((f"{s}_per_class", {c: s for c in by_class}))
    for f in fractions:
        settings.append((_fraction_key(f), fraction_counts(by_class, f)))

    results = {}
    for key, counts in settings:
        runs = [
            _fit_and_score(
                x, y, tx, ty, take_per_class(by_class, counts, seed),
                C=C, max_iter=max_iter, tol=tol, centering=centering,
            )
            for seed in seeds
        ]
        results[key] = {
            "mean": float(np.mean(runs)),
            "std": float(np.std(runs)),
            "runs": runs,
            "n_labelled": int(sum(counts.values())),
        }
    return results
