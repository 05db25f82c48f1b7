import random

import pytest
import torch
from torch.utils.data import DataLoader

from mimreg.data import BadSample, TransformedDataset, collate_skipping_bad, load_dataset, pretrain_transform
from mimreg.data.base import RawDataset


@pytest.fixture
def dataset():
    return TransformedDataset(load_dataset("synthetic", "train"), pretrain_transform(16), seed=7)


def test_same_seed_epoch_index_gives_same_tensor_in_any_order(dataset):
    dataset.set_epoch(3)
    forward = [dataset[i][0] for i in range(6)]
    backward = [dataset[i][0] for i in reversed(range(6))][::-1]
    interleaved = [dataset[i][0] for i in (4, 0, 5, 1, 3, 2)]
    for i in range(6):
        assert torch.equal(forward[i], backward[i])
    assert torch.equal(interleaved[0], forward[4]) and torch.equal(interleaved[3], forward[1])
    fresh = TransformedDataset(dataset.dataset, pretrain_transform(16), seed=7)
    fresh.set_epoch(3)
    assert torch.equal(fresh[2][0], forward[2])


def test_leaves_global_rng_state_untouched(dataset):
    torch.manual_seed(123)
    random.seed(456)
    torch_state, python_state = torch.get_rng_state(), random.getstate()
    dataset[0]
    dataset[1]
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert random.getstate() == python_state


def test_epoch_seed_and_index_change_the_augmentation(dataset):
    dataset.set_epoch(0)
    epoch0 = dataset[5][0]
    dataset.set_epoch(1)
    assert not torch.equal(dataset[5][0], epoch0)
    other_seed = TransformedDataset(dataset.dataset, dataset.transform, seed=8)
    assert not torch.equal(other_seed[5][0], epoch0)


def test_labels_and_metadata_pass_through(dataset):
    assert dataset[3][1] == dataset.dataset[3][1]
    assert dataset.num_classes == 10 and len(dataset) == 512
    assert dataset.labels is dataset.dataset.labels


def test_worker_processes_reproduce_the_same_batches(dataset):
    dataset.set_epoch(2)
    subset = torch.utils.data.Subset(dataset, range(8))
    in_process = [b.images for b in DataLoader(subset, batch_size=4, collate_fn=collate_skipping_bad)]
    in_workers = [b.images for b in DataLoader(subset, batch_size=4, num_workers=2,
                                               collate_fn=collate_skipping_bad)]
    assert all(torch.equal(a, b) for a, b in zip(in_process, in_workers))


def test_set_epoch_reaches_persistent_workers(dataset):
    subset = torch.utils.data.Subset(dataset, range(4))
    loader = DataLoader(subset, batch_size=4, num_workers=1, persistent_workers=True,
                        collate_fn=collate_skipping_bad)
    seen = []
    for epoch in (0, 1):
        dataset.set_epoch(epoch)
        seen.append(next(iter(loader)).images)
    dataset.set_epoch(1)
    assert torch.equal(seen[1], torch.stack([dataset[i][0] for i in range(4)]))
    assert not torch.equal(seen[0], seen[1])


class _AlwaysBad(RawDataset):
    def __getitem__(self, index):
        return BadSample(f"/bad/{index}.jpg")


def test_bad_samples_pass_through_untransformed():
    dataset = TransformedDataset(_AlwaysBad([0, 1], ["a", "b"]), pretrain_transform(8), seed=0)
    assert dataset[1] == BadSample("/bad/1.jpg")
