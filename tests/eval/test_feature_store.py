"""Features written to disk in chunks give the same k-NN and probe numbers as features in memory."""

import pytest
import torch

from mimreg.eval.feature_store import FeatureWriter, read_features
from mimreg.eval.knn import knn_classify, knn_protocols
from mimreg.eval.linear import linear_probe
from mimreg.neighbours import nearest


def clustered(n, dim=8, classes=4, seed=0):
    """Noisy clusters, so that k-NN and the probe land well above chance and below 100%."""
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(99)) * 2.0  # shared by the splits
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    return centres[y] + torch.randn(n, dim, generator=g) * 4.0 + 10.0, y


def stored(tmp_path, x, y, batch=37):
    """x written batch by batch as a feature store would be during embedding, read back memory-mapped."""
    writer = FeatureWriter(tmp_path, "train", ("cls",))
    for start in range(0, len(x), batch):
        writer.append({"cls": x[start : start + batch]})
    features = writer.close(y)
    return features["cls"]


@pytest.fixture(scope="module")
def data():
    train_x, train_y = clustered(300, seed=0)
    test_x, test_y = clustered(120, seed=1)
    return train_x, train_y, test_x, test_y


def test_stored_rows_are_the_in_memory_rows(tmp_path, data):
    train_x, train_y, _, _ = data
    on_disk = stored(tmp_path, train_x, train_y)
    assert isinstance(on_disk, torch.Tensor) and on_disk.dtype == torch.float32
    assert torch.equal(on_disk, train_x)
    features, labels = read_features(tmp_path, "train")
    assert torch.equal(labels, train_y) and (tmp_path / "train_cls.f32").stat().st_size == train_x.numel() * 4


def test_knn_on_stored_features_equals_knn_in_memory(tmp_path, data):
    train_x, train_y, test_x, test_y = data
    in_memory = knn_protocols(train_x, train_y, test_x, test_y)
    on_disk = knn_protocols(stored(tmp_path, train_x, train_y), train_y, test_x, test_y)
    assert on_disk == in_memory
    assert 40 < in_memory["knn10_euclidean"] < 100  # a problem where the votes matter


@pytest.mark.parametrize("protocol", ["mae", "magma", "lars"])
def test_probe_streamed_from_the_store_equals_the_probe_in_memory(tmp_path, data, protocol):
    train_x, train_y, test_x, test_y = data
    options = dict(protocol=protocol, epochs=5, batch_size=32)
    in_memory = linear_probe(train_x, train_y, test_x, test_y, **options)
    on_disk = linear_probe(stored(tmp_path, train_x, train_y), train_y, test_x, test_y, stream=True, **options)
    assert on_disk == in_memory


def test_sweep_refuses_stored_features(tmp_path, data):
    from mimreg.errors import MimregError

    train_x, train_y, test_x, test_y = data
    with pytest.raises(MimregError, match="lars, mae or magma"):
        linear_probe(train_x, train_y, test_x, test_y, stream=True)


def test_streamed_bank_finds_the_brute_force_neighbours(data):
    train_x, _, test_x, _ = data
    for metric in ("euclidean", "cosine"):
        top, idx, _ = nearest(train_x, test_x, 20, metric, device="cpu", chunk=17, bank_chunk=23)
        if metric == "cosine":
            score = torch.nn.functional.normalize(test_x.double(), dim=1) @ torch.nn.functional.normalize(
                train_x.double(), dim=1).T
        else:
            score = -torch.cdist(test_x.double(), train_x.double())
        expected = score.topk(20, dim=1).indices
        assert torch.equal(idx, expected), metric
        one_chunk = nearest(train_x, test_x, 20, metric, device="cpu", chunk=1024, bank_chunk=10 ** 6)
        torch.testing.assert_close(top, one_chunk[0], rtol=0, atol=1e-5 * float(top.abs().max()))


def test_protocols_equal_each_protocols_own_knn(data):
    train_x, train_y, test_x, test_y = data
    got = knn_protocols(train_x, train_y, test_x, test_y, chunk=50)
    assert got == {
        "knn10_euclidean": knn_classify(train_x, train_y, test_x, test_y, k=10)["top1"],
        "knn20_euclidean_weighted": knn_classify(train_x, train_y, test_x, test_y, k=20, vote="distance")["top1"],
        "knn20_cosine": knn_classify(train_x, train_y, test_x, test_y, k=20, metric="cosine")["top1"],
    }


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_knn_on_the_gpu_equals_the_cpu(tmp_path, data):
    train_x, train_y, test_x, test_y = data
    bank = stored(tmp_path, train_x, train_y)
    assert knn_protocols(bank, train_y, test_x, test_y, device="cuda") == knn_protocols(train_x, train_y, test_x, test_y)
