"""Augmentations that depend only on (seed, epoch, index), so training can resume exactly."""

from __future__ import annotations

import random
from contextlib import contextmanager
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from mimreg.data.base import BadSample, RawDataset

_UINT64 = (1 << 64) - 1


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 64-bit seed mixing the three numbers, so nearby triples give unrelated streams."""
    words = [seed & _UINT64, epoch & _UINT64, index & _UINT64]
    state = np.random.SeedSequence(words).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 32) | int(state[1])


class TransformedDataset(Dataset):
    """A RawDataset with a random transform whose draws are fixed per (seed, epoch, index).

    Whichever worker, batch order or process produces sample i of epoch e, it gets the
    same augmentation; the caller's torch CPU and python `random` states are left as they
    were. (numpy's global RNG is not reseeded: torchvision transforms do not use it.)
    """

    def __init__(self, dataset: RawDataset, transform: Callable[[Image.Image], torch.Tensor], seed: int):
        self.dataset = dataset
        self.transform = transform
        self.seed = int(seed)
        # In shared memory so that DataLoader workers kept alive across epochs
        # (persistent_workers=True) see set_epoch calls made on the main copy.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream; call before iterating over each epoch."""
        self._epoch.fill_(int(epoch))

    @property
    def labels(self) -> np.ndarray:
        return self.dataset.labels

    @property
    def classes(self) -> list[str]:
        return self.dataset.classes

    @property
    def num_classes(self) -> int:
        return self.dataset.num_classes

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int] | BadSample:
        sample = self.dataset[index]
        if isinstance(sample, BadSample):
            return sample
        image, label = sample
        with seeded_draws(sample_seed(self.seed, self.epoch, int(index))):
            tensor = self.transform(image)
        return tensor, label


@contextmanager
def seeded_draws(seed: int):
    """Inside: torch's CPU generator and python's `random` seeded with `seed`; after: both as before."""
    python_state = random.getstate()
    try:
        # devices=[] keeps CUDA out of it; seeding the CPU generator directly (not
        # torch.manual_seed) leaves every CUDA generator alone too.
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            random.seed(seed)
            yield
    finally:
        random.setstate(python_state)
