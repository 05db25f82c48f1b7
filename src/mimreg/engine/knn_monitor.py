"""An online k-NN monitor for pretraining: every few epochs, the k-NN accuracy of the encoder's
frozen cls features on a fixed random subset of the test split (queries) against a fixed random
subset of the train split (memory bank), both eval-transformed (as solo-learn's and lightly's
online k-NN; 20-NN cosine, T=0.07)."""

from __future__ import annotations

import math

import numpy as np
import torch

from mimreg.config import Config
from mimreg.data import dataset_stats, eval_crop_fraction, eval_transform, load_dataset
from mimreg.data.base import BadSample
from mimreg.errors import ConfigError, DataError
from mimreg.neighbours import knn_classify

# train.knn_every left unset (None): this many measurements over a run, the last after the last epoch
AUTO_MEASUREMENTS = 2


class KnnMonitor:
    """`due(epochs_done)` says whether to measure after that many finished epochs; `measure(encoder)`
    returns {"knn/top1": percent}. The images are decoded once, at construction; the encoder's
    train/eval mode and every RNG are left as they were."""

    def __init__(self, bank: tuple[torch.Tensor, torch.Tensor], queries: tuple[torch.Tensor, torch.Tensor], *,
                 every: int, epochs: int, device: torch.device | str = "cpu", k: int = 20,
                 temperature: float = 0.07, batch_size: int = 256, num_classes: int | None = None):
        self.bank_images, self.bank_labels = bank
        self.query_images, self.query_labels = queries
        self.every, self.epochs = every, epochs
        self.device = torch.device(device)
        self.k = min(k, len(self.bank_labels))
        self.temperature, self.batch_size = temperature, batch_size
        # a small bank may miss a class that a query holds
        self.num_classes = num_classes or int(max(self.bank_labels.max(), self.query_labels.max())) + 1

    @classmethod
    def from_config(cls, cfg: Config, device: torch.device | str = "cpu") -> KnnMonitor | None:
        """The monitor `cfg.train` asks for: None when knn_every is 0, or when it is unset and the
        dataset has no labelled train and test splits; a ConfigError when it is set and cannot run."""
        every = cfg.train.knn_every
        if every == 0:
            return None
        try:
            train = load_dataset(cfg.data.name, "train", cfg.data.root, columns=cfg.data.hf_columns())
            test = load_dataset(cfg.data.name, "test", cfg.data.root, columns=cfg.data.hf_columns())
            missing = [s for s, d in (("train", train), ("test", test)) if (np.asarray(d.labels) < 0).all()]
            if missing:
                raise DataError(f"the {' and '.join(missing)} split(s) of {cfg.data.name!r} have no labels")
        except DataError as err:
            if every is None:
                return None  # on by default only where it can run
            raise ConfigError(f"train.knn_every={every} needs labelled train and test splits: {err}; set "
                              "train.knn_every=0") from None
        if every is None:
            every = max(1, math.ceil(cfg.train.epochs / AUTO_MEASUREMENTS))
        transform = eval_transform(cfg.img_size, *dataset_stats(cfg.data.name), eval_crop_fraction(cfg.data.name))
        rng = np.random.default_rng([cfg.train.seed, 0x6B6E6E])  # fixed subsets, apart from other draws
        return cls(_decoded(train, cfg.train.knn_bank, rng, transform), _decoded(test, cfg.train.knn_queries, rng, transform),
                   every=every, epochs=cfg.train.epochs, device=device, num_classes=train.num_classes)

    def due(self, epochs_done: int) -> bool:
        """True after every `every`-th epoch and after the last one."""
        return epochs_done > 0 and (epochs_done % self.every == 0 or epochs_done == self.epochs)

    @torch.no_grad()
    def features(self, encoder: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
        chunks = [encoder.forward_masked(images[s : s + self.batch_size].to(self.device), None).cls.float()
                  for s in range(0, len(images), self.batch_size)]
        return torch.cat(chunks)

    def measure(self, encoder: torch.nn.Module) -> dict[str, float]:
        """k-NN top-1 (percent) of the query subset against the bank, with `encoder` in eval mode."""
        was_training = encoder.training
        encoder.eval()
        try:
            bank = self.features(encoder, self.bank_images)
            queries = self.features(encoder, self.query_images)
        finally:
            encoder.train(was_training)
        result = knn_classify(bank, self.bank_labels.to(bank.device), queries, self.query_labels.to(bank.device),
                              k=self.k, metric="cosine", temperature=self.temperature, num_classes=self.num_classes)
        return {"knn/top1": result["top1"]}


def _decoded(dataset, size: int, rng: np.random.Generator, transform) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random subset of `size` labelled images (all when fewer), eval-transformed, as tensors."""
    labelled = np.flatnonzero(np.asarray(dataset.labels) >= 0)
    return decode_images(dataset, np.sort(rng.choice(labelled, min(size, labelled.size), replace=False)), transform)


def decode_images(dataset, indices, transform) -> tuple[torch.Tensor, torch.Tensor]:
    """The images at `indices`, eval-transformed, stacked, with their labels; undecodable files left out."""
    images, labels = [], []
    for index in indices:
        sample = dataset[int(index)]
        if isinstance(sample, BadSample):
            continue  # an undecodable file: the monitor measures on the others
        images.append(transform(sample[0]))
        labels.append(sample[1])
    return torch.stack(images), torch.tensor(labels, dtype=torch.int64)
