"""The online k-NN monitor: accuracy on separable features, fixed subsets, schedule, when it is on."""

import numpy as np
import pytest
import torch

from mimreg.errors import ConfigError
from mimreg.engine import knn_monitor as monitor_module
from mimreg.engine.knn_monitor import KnnMonitor
from mimreg.models import ViTEncoder

from support import MeanColour

pytestmark = pytest.mark.usefixtures("single_thread")



def colour_images(labels, seed):
    """Class c: a constant colour along direction c of 3 (two classes per direction, opposite signs)."""
    g = torch.Generator().manual_seed(seed)
    directions = torch.tensor([[1.0, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]])
    colours = directions[labels] * (1 + torch.rand(len(labels), 1, generator=g))
    return colours[:, :, None, None].expand(-1, -1, 8, 8) + 0.05 * torch.randn(len(labels), 3, 8, 8, generator=g)


def test_separable_features_are_classified_perfectly_in_eval_mode_without_touching_rng():
    bank_y, query_y = torch.arange(60) % 6, torch.arange(30) % 6
    monitor = KnnMonitor((colour_images(bank_y, 0), bank_y), (colour_images(query_y, 1), query_y), every=1,
                         epochs=1, batch_size=7)
    encoder = MeanColour().train()
    before = torch.get_rng_state()
    assert monitor.measure(encoder) == {"knn/top1": 100.0}  # in train mode dropout would spoil it
    assert encoder.training and torch.equal(torch.get_rng_state(), before)
    shuffled = KnnMonitor((colour_images(bank_y, 0), bank_y[torch.randperm(60, generator=torch.Generator().manual_seed(0))]),
                          (colour_images(query_y, 1), query_y), every=1, epochs=1)
    assert shuffled.measure(encoder)["knn/top1"] < 50  # wrong bank labels: no longer right


def test_due_every_n_epochs_and_after_the_last():
    monitor = KnnMonitor((torch.zeros(2, 3, 4, 4), torch.tensor([0, 1])), (torch.zeros(1, 3, 4, 4), torch.tensor([0])),
                         every=3, epochs=10)
    assert [e for e in range(0, 12) if monitor.due(e)] == [3, 6, 9, 10]


def test_subsets_are_fixed_by_the_seed_and_sized_by_the_config(tiny_config):
    cfg = tiny_config(train__knn_bank=64, train__knn_queries=32)
    first, again = KnnMonitor.from_config(cfg), KnnMonitor.from_config(cfg)
    assert first.bank_images.shape == (64, 3, 32, 32) and first.query_images.shape == (32, 3, 32, 32)
    assert torch.equal(first.bank_images, again.bank_images) and torch.equal(first.query_labels, again.query_labels)
    other = KnnMonitor.from_config(tiny_config(train__knn_bank=64, train__knn_queries=32, train__seed=1))
    assert not torch.equal(first.bank_images, other.bank_images)
    assert first.every == 1  # auto on a 1-epoch run: measure after it
    encoder = ViTEncoder("vit_micro", 32, 4)
    assert 0 <= first.measure(encoder)["knn/top1"] <= 100
    whole = KnnMonitor.from_config(tiny_config(train__knn_bank=10_000, train__knn_queries=4))
    assert len(whole.bank_labels) == 512  # every synthetic training image, no more


def test_off_when_asked_or_when_there_are_no_labels(tiny_config, monkeypatch):
    assert KnnMonitor.from_config(tiny_config(train__knn_every=0)) is None
    assert KnnMonitor.from_config(tiny_config(train__epochs=6, train__knn_bank=4, train__knn_queries=4)).every == 3  # auto: twice per run
    real = monitor_module.load_dataset

    def unlabelled(name, split, root, **options):
        dataset = real(name, split, root, **options)
        dataset.labels = np.full(len(dataset), -1)
        return dataset

    monkeypatch.setattr(monitor_module, "load_dataset", unlabelled)
    assert KnnMonitor.from_config(tiny_config()) is None  # auto: off
    with pytest.raises(ConfigError, match="train.knn_every=2 needs labelled"):
        KnnMonitor.from_config(tiny_config(train__knn_every=2))
    with pytest.raises(ConfigError, match=r"train.knn_every=-1 is out of range: it must be >= 0"):
        tiny_config(train__knn_every=-1)
