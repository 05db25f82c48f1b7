import pytest
import torch

from mimreg.errors import MimregError
from mimreg.eval.knn import knn_classify, knn_protocols

# Two class-0 points near the origin and class-1 points to the right.
TRAIN_X = torch.tensor([[0.0, 0.0], [0.0, 1.0], [2.0, 0.0], [2.1, 1.0], [6.0, 6.0]])
TRAIN_Y = torch.tensor([0, 0, 1, 1, 1])


def predict(query, label, **kwargs):
    """top1 is 100 when the prediction for `query` equals `label`, else 0."""
    return knn_classify(TRAIN_X, TRAIN_Y, torch.tensor([query]), torch.tensor([label]), **kwargs)["top1"]


def test_euclidean_majority_of_three():
    # (0.9, 0.5): distances 1.03 and 1.03 to class 0, 1.21 and 1.3 to class 1 -> votes 0,0,1 -> class 0.
    assert predict([0.9, 0.5], 0, k=3) == 100.0
    # (1.7, 0.4): nearest are (2,0) 0.5 and (2.1,1) 0.72 (class 1), then (0,0) 1.75 -> class 1.
    assert predict([1.7, 0.4], 1, k=3) == 100.0


def test_euclidean_majority_overrides_the_single_nearest():
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.3], [-1.0, -0.3]])
    y = torch.tensor([1, 0, 0])
    query = torch.tensor([[0.0, 0.0]])
    # Distances 1.0 (class 1), 1.044 and 1.044 (class 0).
    assert knn_classify(x, y, query, torch.tensor([1]), k=1)["top1"] == 100.0
    assert knn_classify(x, y, query, torch.tensor([0]), k=3)["top1"] == 100.0


def test_euclidean_tie_with_four_neighbours():
    # (1.5, 0.3): (2,0) c1 0.58, (2.1,1) c1 0.92, (0,0) c0 1.53, (0,1) c0 1.66 -> 2:2 tie,
    # won by class 1, the class of the nearest neighbour (the lower class index is 0).
    assert predict([1.5, 0.3], 1, k=4) == 100.0
    # (0.8, 0.5): (0,0) and (0,1) c0 0.94, (2,0) c1 1.30, (2.1,1) c1 1.39 -> tie won by class 0.
    assert predict([0.8, 0.5], 0, k=4) == 100.0


def test_euclidean_tie_goes_to_the_class_of_the_nearest_neighbour():
    x = torch.tensor([[0.0], [1.0]])
    y = torch.tensor([1, 0])
    # k=2 always ties 1:1; the query's nearest point decides, not the lower class index.
    near_first = knn_classify(x, y, torch.tensor([[0.2]]), torch.tensor([1]), k=2)
    near_second = knn_classify(x, y, torch.tensor([[0.9]]), torch.tensor([0]), k=2)
    assert near_first["top1"] == 100.0 and near_second["top1"] == 100.0


def test_cosine_weighting_beats_majority():
    angles = torch.deg2rad(torch.tensor([0.0, 40.0, -40.0]))
    x = torch.stack([angles.cos(), angles.sin()], dim=1) * torch.tensor([[1.0], [3.0], [0.5]])
    y = torch.tensor([1, 0, 0])
    query, label_1 = torch.tensor([[2.0, 0.0]]), torch.tensor([1])
    # Similarities 1, cos40=0.766, 0.766 (norms do not matter after L2 normalisation).
    # T=0.07: class 1 scores e^(1/0.07)=e^14.29, class 0 scores 2e^10.94 = e^11.64 -> class 1.
    weighted = knn_classify(x, y, query, label_1, k=3, metric="cosine", temperature=0.07)
    assert weighted["top1"] == 100.0
    # A huge temperature makes all weights ~1: a plain majority, 2 votes to 1 -> class 0.
    flat = knn_classify(x, y, query, label_1, k=3, metric="cosine", temperature=1e4)
    assert flat["top1"] == 0.0
    # Euclidean majority with k=3 also picks class 0.
    assert knn_classify(x, y, query, label_1, k=3)["top1"] == 0.0
    assert weighted["metric"] == "cosine" and weighted["k"] == 3


def test_distance_weighted_vote_disagrees_with_the_majority():
    # One class-0 point at distance 1, two class-1 points at distance 3 (k=3):
    # majority: 2 votes to 1 -> class 1; solo-learn's 1/(d + eps): class 0 scores 1, class 1 2/3 -> class 0.
    x = torch.tensor([[1.0, 0.0], [-3.0, 0.0], [0.0, 3.0]])
    y = torch.tensor([0, 1, 1])
    query = torch.tensor([[0.0, 0.0]])
    assert knn_classify(x, y, query, torch.tensor([1]), k=3)["top1"] == 100.0
    weighted = knn_classify(x, y, query, torch.tensor([0]), k=3, vote="distance")
    assert weighted["top1"] == 100.0 and weighted["vote"] == "distance"
    # Moving the class-1 points to distance 1.9 turns the weighted vote too: 2/1.9 = 1.05 > 1.
    closer = x * torch.tensor([[1.0], [1.9 / 3], [1.9 / 3]])
    assert knn_classify(closer, y, query, torch.tensor([1]), k=3, vote="distance")["top1"] == 100.0


def test_distance_weights_use_true_distances_not_the_shifted_gram_form():
    # Far from the origin the query norm matters: 1/(d + eps) with d = |q - t|, translation invariant.
    x = torch.tensor([[1.0, 0.0], [-3.0, 0.0], [0.0, 3.0]]) + 100.0
    y = torch.tensor([0, 1, 1])
    assert knn_classify(x, y, torch.tensor([[100.0, 100.0]]), torch.tensor([0]), k=3, vote="distance")["top1"] == 100.0


def test_accuracy_counts_correct_rows():
    queries = torch.tensor([[0.9, 0.5], [1.7, 0.4], [0.1, 0.1], [5.5, 5.5]])
    labels = torch.tensor([0, 1, 1, 1])  # the third is wrong (predicted 0)
    assert knn_classify(TRAIN_X, TRAIN_Y, queries, labels, k=3)["top1"] == pytest.approx(75.0)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_chunked_equals_unchunked(metric):
    g = torch.Generator().manual_seed(0)
    train_x, test_x = torch.randn(300, 8, generator=g) + 3.0, torch.randn(101, 8, generator=g) + 3.0
    train_y, test_y = torch.randint(0, 5, (300,), generator=g), torch.randint(0, 5, (101,), generator=g)
    whole = knn_classify(train_x, train_y, test_x, test_y, k=7, metric=metric, chunk=10_000)
    for chunk in (1, 7, 50):
        assert knn_classify(train_x, train_y, test_x, test_y, k=7, metric=metric, chunk=chunk) == whole


def test_protocols_are_the_three_standard_settings():
    g = torch.Generator().manual_seed(1)
    train_x, train_y = torch.randn(60, 4, generator=g), torch.arange(60) % 3
    test_x, test_y = torch.randn(20, 4, generator=g), torch.arange(20) % 3
    result = knn_protocols(train_x, train_y, test_x, test_y)
    assert result == {
        "knn10_euclidean": knn_classify(train_x, train_y, test_x, test_y, k=10)["top1"],
        "knn20_euclidean_weighted": knn_classify(train_x, train_y, test_x, test_y, k=20, vote="distance")["top1"],
        "knn20_cosine": knn_classify(train_x, train_y, test_x, test_y, k=20, metric="cosine")["top1"],
    }


def test_bad_arguments_raise_mimreg_errors():
    with pytest.raises(MimregError, match="k=9"):
        knn_classify(TRAIN_X, TRAIN_Y, TRAIN_X, TRAIN_Y, k=9)
    with pytest.raises(MimregError, match="metric"):
        knn_classify(TRAIN_X, TRAIN_Y, TRAIN_X, TRAIN_Y, metric="manhattan")
    with pytest.raises(MimregError, match="vote"):
        knn_classify(TRAIN_X, TRAIN_Y, TRAIN_X, TRAIN_Y, k=3, metric="cosine", vote="distance")
