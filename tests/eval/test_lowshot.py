import numpy as np
import pytest
import torch

from mimreg.errors import MimregError
from mimreg.eval.lowshot import lowshot_logistic


def blobs(per_class, num_classes=4, dim=12, spread=0.6, offset=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    centers = 3.0 * torch.eye(num_classes, dim)
    return centers[labels] + spread * torch.randn(labels.numel(), dim, generator=g) + offset, labels


@pytest.fixture(scope="module")
def split():
    train_x, train_y = blobs(per_class=20, seed=0)
    test_x, test_y = blobs(per_class=25, seed=1)
    return train_x, train_y, test_x, test_y


SETTINGS = dict(shots=(1, 2, 5), fractions=(0.01, 0.1), seeds=(0, 1, 2))


def test_separable_blobs_score_high_with_stats_over_seeds(split):
    result = lowshot_logistic(*split, **SETTINGS)
    assert list(result) == ["1_per_class", "2_per_class", "5_per_class", "1pct", "10pct"]
    for entry in result.values():
        assert len(entry["runs"]) == 3
        assert entry["mean"] == pytest.approx(np.mean(entry["runs"]))
        assert entry["std"] == pytest.approx(np.std(entry["runs"]))
    assert result["5_per_class"]["mean"] >= 95.0
    assert result["10pct"]["mean"] >= 95.0
    # 1% of 20 rounds to 0 and is raised to one image per class; 10% is two per class.
    assert result["1pct"]["n_labelled"] == 4 and result["10pct"]["n_labelled"] == 8
    assert result["5_per_class"]["n_labelled"] == 20


def test_seeds_draw_different_subsets_so_std_is_informative():
    train_x, train_y = blobs(per_class=30, spread=2.5, seed=2)
    test_x, test_y = blobs(per_class=50, spread=2.5, seed=3)
    entry = lowshot_logistic(train_x, train_y, test_x, test_y, shots=(1,), fractions=(), seeds=(0, 1, 2))["1_per_class"]
    assert len(set(entry["runs"])) > 1 and entry["std"] > 0


def test_same_seeds_give_identical_results(split):
    assert lowshot_logistic(*split, shots=(2,), fractions=()) == lowshot_logistic(*split, shots=(2,), fractions=())


@pytest.mark.parametrize("centering", ["train_mean", "row"])
def test_centring_and_normalisation_remove_offset_and_scale(split, centering):
    train_x, train_y, test_x, test_y = split
    plain = lowshot_logistic(*split, shots=(1, 5), fractions=(), centering=centering)
    shifted = lowshot_logistic(
        7.0 * train_x + 1000.0, train_y, 7.0 * test_x + 1000.0, test_y, shots=(1, 5), fractions=(), centering=centering
    )
    one_sample = 100.0 / test_y.numel()  # float32 rounding may flip at most a knife-edge sample
    for key in plain:
        assert shifted[key]["runs"] == pytest.approx(plain[key]["runs"], abs=one_sample + 1e-9)
    assert shifted["5_per_class"]["mean"] >= 95.0


class RecordingClassifier:
    """Stands in for LogisticRegression and keeps the matrices it is given."""

    seen: dict = {}

    def __init__(self, **kwargs):
        RecordingClassifier.seen["kwargs"] = kwargs

    def fit(self, x, y):
        RecordingClassifier.seen["fit"] = x
        return self

    def predict(self, x):
        RecordingClassifier.seen["predict"] = x
        return np.zeros(len(x), dtype=np.int64)


@pytest.mark.parametrize("centering", ["train_mean", "row"])
def test_classifier_sees_centred_unit_rows(monkeypatch, centering):
    import sklearn.linear_model

    monkeypatch.setattr(sklearn.linear_model, "LogisticRegression", RecordingClassifier)
    train_x, train_y = blobs(per_class=5, offset=10.0, seed=4)
    test_x, test_y = blobs(per_class=3, offset=10.0, seed=5)
    # 5 shots of 5 images per class selects the whole training set, in its original order.
    lowshot_logistic(train_x, train_y, test_x, test_y, shots=(5,), fractions=(), seeds=(0,), C=2.0, centering=centering)
    train, test = train_x.double().numpy(), test_x.double().numpy()
    if centering == "train_mean":
        train, test = train - train.mean(axis=0), test - train.mean(axis=0)
    else:
        train, test = train - train.mean(axis=1, keepdims=True), test - test.mean(axis=1, keepdims=True)
    expected_fit = train / np.linalg.norm(train, axis=1, keepdims=True)
    expected_predict = test / np.linalg.norm(test, axis=1, keepdims=True)
    np.testing.assert_allclose(RecordingClassifier.seen["fit"], expected_fit, atol=1e-12)
    np.testing.assert_allclose(RecordingClassifier.seen["predict"], expected_predict, atol=1e-12)
    assert RecordingClassifier.seen["kwargs"]["C"] == 2.0
    assert RecordingClassifier.seen["kwargs"]["fit_intercept"] is False


def test_too_few_images_for_the_shots_raises(split):
    train_x, train_y, test_x, test_y = split
    keep = torch.cat([torch.arange(0, 60), torch.arange(60, 63)])  # class 3 keeps 3 images
    with pytest.raises(MimregError, match="class 3 has 3 training images but shots=5"):
        lowshot_logistic(train_x[keep], train_y[keep], test_x, test_y, shots=(5,), fractions=())


def test_bad_settings_raise(split):
    with pytest.raises(MimregError, match="fractions"):
        lowshot_logistic(*split, shots=(), fractions=(10,))
    with pytest.raises(MimregError, match="seeds"):
        lowshot_logistic(*split, seeds=())
    train_x, train_y, test_x, test_y = split
    with pytest.raises(MimregError, match="single class"):
        lowshot_logistic(train_x, torch.zeros_like(train_y), test_x, torch.zeros_like(test_y))
