"""The pretraining input pipeline: seeded subset, per-epoch order shared by all processes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader

from mimreg.config import Config
from mimreg.data import (Batch, MultiView, TransformedDataset, collate_skipping_bad, dataset_stats,
                         load_dataset, msn_views, pretrain_transform, simclr_transform)
from mimreg.errors import DataError


class EpochBatches:
    """Index batches for one process: a seeded permutation per epoch, cut into `world` x `batch`
    blocks per step, so that the blocks of one step, concatenated in rank order, are the global
    batch. The tail that does not fill a step is dropped."""

    def __init__(self, size: int, batch: int, world: int, rank: int, seed: int):
        self.size, self.batch, self.world, self.rank, self.seed = size, batch, world, rank, seed
        self.steps = size // (batch * world)

    def for_epoch(self, epoch: int, start: int = 0) -> list[list[int]]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(self.size, generator=generator)[: self.steps * self.batch * self.world]
        blocks = order.view(self.steps, self.world, self.batch)[start:, self.rank]
        return blocks.tolist()


@dataclass
class PretrainData:
    dataset: TransformedDataset
    batches: EpochBatches
    num_classes: int
    num_images: int

    def loader(self, epoch: int, start: int, num_workers: int, pin_memory: bool) -> DataLoader:
        self.dataset.set_epoch(epoch)
        # the loader draws its worker seeds from this generator, not from the global RNG, so a
        # resumed run draws the same model randomness (e.g. drop_path) as an uninterrupted one
        generator = torch.Generator().manual_seed(self.batches.seed * 100_003 + epoch)
        return DataLoader(self.dataset, batch_sampler=self.batches.for_epoch(epoch, start),
                          collate_fn=collate_keep_size, num_workers=num_workers, pin_memory=pin_memory,
                          generator=generator)


def build_pretrain_data(cfg: Config, world: int, rank: int) -> PretrainData:
    raw = load_dataset(cfg.data.name, "pretrain", cfg.data.root, download=cfg.data.download,
                       skip_bad_images=cfg.data.skip_bad_images)
    if cfg.data.subset is not None and cfg.data.subset < len(raw):
        # a random subset: folders are sorted by class, so "the first N" would drop classes
        chosen = np.random.default_rng(cfg.train.seed).choice(len(raw), cfg.data.subset, replace=False)
        raw = raw.subset(np.sort(chosen).tolist())
    needed = cfg.optim.batch_size * world
    if len(raw) < needed:
        raise DataError(f"dataset {cfg.data.name!r} has {len(raw)} images, fewer than one global batch "
                        f"({cfg.optim.batch_size} x {world} processes); lower optim.batch_size")
    mean, std = dataset_stats(cfg.data.name)
    transform = pretrain_views(cfg, mean, std)
    dataset = TransformedDataset(raw, transform, seed=cfg.train.seed)
    labels = np.asarray(raw.labels)
    num_classes = int(raw.num_classes) if (labels >= 0).any() else 0
    return PretrainData(dataset, EpochBatches(len(raw), cfg.optim.batch_size, world, rank, cfg.train.seed),
                        num_classes, len(raw))


def pretrain_views(cfg: Config, mean, std):
    """The augmentation of `data.augmentation`, applied `data.num_views` times when more than once."""
    d = cfg.data
    if d.augmentation == "msn":
        return msn_views(cfg.img_size, d.focal_views, d.focal_size or cfg.model.patch_size * max(
            1, round(cfg.img_size * 96 / 224 / cfg.model.patch_size)), d.blur, mean, std)
    if d.augmentation == "simclr":
        transform = simclr_transform(cfg.img_size, tuple(d.crop_scale), d.hflip, d.blur, mean, std)
    else:
        transform = pretrain_transform(cfg.img_size, tuple(d.crop_scale), d.hflip, mean, std)
    return MultiView(transform, d.num_views) if d.num_views > 1 else transform


def collate_keep_size(samples) -> Batch:
    """Collate, replacing images that failed to decode (skip_bad_images) by repeats of good ones,
    so every process keeps the same batch size for the global-batch collectives."""
    batch = collate_skipping_bad(samples)
    if not batch.bad_files:
        return batch
    if batch.images is None:
        raise DataError(f"every image of a batch failed to decode ({batch.bad_files[:3]} ...); "
                        "check the dataset files")
    missing = len(samples) - len(batch.labels)
    repeat = torch.arange(missing) % len(batch.labels)
    if isinstance(batch.images, list):
        batch.images = [torch.cat([view, view[repeat]]) for view in batch.images]
    else:
        batch.images = torch.cat([batch.images, batch.images[repeat]])
    batch.labels = torch.cat([batch.labels, batch.labels[repeat]])
    return batch
