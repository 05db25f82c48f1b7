"""2-D maps and the Davies-Bouldin index of features."""

import numpy as np
import pytest
import torch

from mimreg.analysis import embedding
from mimreg.analysis.embedding import davies_bouldin, embed_2d, embedding_title, plot_embedding_panels
from mimreg.analysis.inputs import class_sample
from mimreg.errors import MimregError


def clusters(per_class=20, classes=4, spread=0.05, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, 16)) * 3
    labels = np.repeat(np.arange(classes), per_class)
    return centres[labels] + spread * rng.normal(size=(len(labels), 16)), labels


def test_dbi_hand_computed_and_equal_to_scikit_learns():
    from sklearn.metrics import davies_bouldin_score

    # two clusters on a line: scatters (mean distance to centroid) 1 and 2, centroids 10 apart
    x = np.array([[-1.0, 0], [1, 0], [8, 0], [12, 0]])
    assert davies_bouldin(x, [0, 0, 1, 1]) == pytest.approx((1 + 2) / 10)
    features, labels = clusters(spread=0.7)
    assert davies_bouldin(torch.tensor(features), torch.tensor(labels)) == davies_bouldin_score(features, labels)
    tight, _ = clusters(spread=0.1)
    assert davies_bouldin(tight, labels) < davies_bouldin(features, labels)  # tighter classes, lower index


def test_dbi_needs_two_classes_and_finite_features():
    with pytest.raises(MimregError, match="two classes"):
        davies_bouldin(np.ones((3, 2)), [1, 1, 1])
    with pytest.raises(MimregError, match="NaN"):
        davies_bouldin(np.array([[0.0, np.nan], [1, 1]]), [0, 1])


@pytest.mark.parametrize("method", ["tsne", "pacmap"])
def test_maps_separate_well_separated_classes(method):
    if not embedding.available(method):
        pytest.skip(f"{method} is not installed (pip install 'mimreg[viz]')")
    features, labels = clusters()
    coords = embed_2d(features, method, seed=0)
    assert coords.shape == (80, 2) and np.isfinite(coords).all()
    assert np.array_equal(coords, embed_2d(features, method, seed=0))  # seeded
    # in 2-D, each point's nearest neighbour is of its own class
    distances = np.linalg.norm(coords[:, None] - coords[None], axis=-1) + np.eye(80) * 1e9
    assert (labels[distances.argmin(axis=1)] == labels).mean() > 0.95


def test_missing_package_names_the_extra(monkeypatch):
    monkeypatch.setattr(embedding, "available", lambda name: name == "tsne")
    with pytest.raises(MimregError, match=r"PaCMAP needs the pacmap package: pip install 'mimreg\[viz\]'"):
        embed_2d(np.zeros((5, 3)), "pacmap")
    with pytest.raises(MimregError, match="unknown embedding"):
        embed_2d(np.zeros((5, 3)), "isomap")


def test_class_sample_draws_ten_classes_with_at_most_k_each():
    labels = np.repeat(np.arange(20), 30)
    chosen = class_sample(labels, num_classes=10, per_class=7, seed=3)
    assert np.array_equal(chosen, np.sort(chosen)) and len(set(chosen)) == 70
    counts = np.bincount(labels[chosen], minlength=20)
    assert sorted(counts[counts > 0]) == [7] * 10
    assert np.array_equal(chosen, class_sample(labels, 10, 7, seed=3))
    assert len(class_sample(np.array([0, 0, 1]), 10, 5)) == 3  # fewer classes or images: all of them


def test_titles_and_side_by_side_panels(tmp_path):
    assert embedding_title("pacmap", 5.61, 69.04, "m-mae") == "m-mae: PaCMAP\nDBI 5.61, linear 69.0%"
    assert embedding_title("tsne", 6.2, None) == "t-SNE\nDBI 6.20"
    rng = np.random.default_rng(0)
    panels = [(rng.normal(size=(30, 2)), np.arange(30) % 3, f"run {i}") for i in range(4)]
    figure = tmp_path / "panels.png"
    plot_embedding_panels(panels, ["a", "b", "c"], figure)
    from PIL import Image

    width, height = Image.open(figure).size
    assert width > 3 * height  # four panels in a row


def test_a_map_leaves_torch_on_its_threads():
    # numba (PaCMAP, seeded) dropped torch to one thread: the demo's next pretraining ran 1.6x slower
    method = "pacmap" if embedding.available("pacmap") else "tsne"
    features, _ = clusters()
    before = torch.get_num_threads()
    try:
        for _ in range(2):  # PaCMAP's second seeded call was the one that changed it
            torch.set_num_threads(2)
            embed_2d(features, method, seed=0)
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
