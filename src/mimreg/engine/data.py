"""The pretraining input pipelines (loader: PIL in workers; device: batched on the training device):
seeded subset, per-epoch order shared by all processes."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from mimreg.config import Config
from mimreg.console import say
from mimreg.data import Batch, MultiView, TransformedDataset, collate_skipping_bad, dataset_stats, load_dataset, msn_views
from mimreg.data.batch_augment import BatchAugment
from mimreg.data.base import BadSample
from mimreg.data.draft import DraftCropDataset
from mimreg.data.decoded import DecodedImages, MixedSizesError, decode_images, decoded_nbytes
from mimreg.data.encoded import EncodedFiles, collate_encoded, decode_on
from mimreg.data.files import sample_paths
from mimreg.data.shards import shard_of_samples
from mimreg.data.normalise import Normalise
from mimreg.data.transforms import ViewSpec, mae_view, msn_view_specs, simclr_view, view_transform
from mimreg.errors import ConfigError, DataError


class EpochBatches:
    """Index batches for one process: a seeded permutation per epoch, cut into `world` x `batch`
    blocks per micro-step, so that the blocks of one micro-step, concatenated in rank order, are the
    global micro-batch. `steps` counts the micro-steps of an epoch, in whole cycles of `accum`: the
    tail that does not fill a cycle is dropped, so no micro-batch's gradient spills into the next
    epoch's first optimizer step."""

    def __init__(self, size: int, batch: int, world: int, rank: int, seed: int, accum: int = 1):
        self.size, self.batch, self.world, self.rank, self.seed = size, batch, world, rank, seed
        self.steps = size // (batch * world) // accum * accum

    def for_epoch(self, epoch: int, start: int = 0) -> list[list[int]]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(self.size, generator=generator)[: self.steps * self.batch * self.world]
        blocks = order.view(self.steps, self.world, self.batch)[start:, self.rank]
        return blocks.tolist()


class ShardBatches(EpochBatches):
    """EpochBatches for tar shards where each process reads only its own shards: process r takes
    shards r, r + world, ... (in sorted order) and each epoch a seeded permutation of their samples.
    Every process makes the steps the smallest share fills, and `size` counts the images an epoch
    reads in all (what the run's step counts are made from). With one process it is EpochBatches."""

    def __init__(self, shard_of: np.ndarray, batch: int, world: int, rank: int, seed: int, accum: int = 1):
        super().__init__(len(shard_of), batch, world, rank, seed, accum)
        shards = np.unique(shard_of)
        if len(shards) < world:
            raise ConfigError(f"the pretraining images lie in {len(shards)} shard(s) for {world} processes, and each "
                              f"process reads its own shards; write at least {world} shards (more, of similar "
                              "sizes, waste fewer images)")
        shares = [np.flatnonzero(np.isin(shard_of, shards[r::world])) for r in range(world)]
        self.mine = torch.from_numpy(shares[rank])
        self.steps = min(len(s) for s in shares) // batch // accum * accum
        self.size = self.steps * batch * world if world > 1 else len(shard_of)

    def for_epoch(self, epoch: int, start: int = 0) -> list[list[int]]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = self.mine[torch.randperm(len(self.mine), generator=generator)][: self.steps * self.batch]
        return order.view(self.steps, self.batch)[start:].tolist()


def pretrain_batches(cfg: Config, raw, world: int, rank: int) -> EpochBatches:
    """The index batches of process `rank`: tar shards each read by their own process."""
    shard_of = shard_of_samples(raw)
    args = (cfg.optim.batch_size, world, rank, cfg.train.seed, cfg.optim.accum_steps)
    return EpochBatches(len(raw), *args) if shard_of is None else ShardBatches(shard_of, *args)


class _EpochBlocks:
    """The batch sampler of a DataLoader kept across epochs: the blocks of the current epoch."""

    def __init__(self):
        self.blocks: list[list[int]] = []

    def __iter__(self):
        return iter(self.blocks)

    def __len__(self) -> int:
        return len(self.blocks)


class _PersistentLoader:
    """A DataLoader over `dataset` built once: its workers (persistent_workers) and their prefetching
    serve every epoch, reading the epoch's blocks when an iteration starts."""

    def __init__(self, dataset, batches: EpochBatches, collate):
        self._dataset, self._batches, self._collate = dataset, batches, collate
        self._blocks = _EpochBlocks()
        self._loader: DataLoader | None = None
        self._settings = None

    def epoch(self, epoch: int, start: int, num_workers: int, pin_memory: bool) -> DataLoader:
        self._blocks.blocks = self._batches.for_epoch(epoch, start)
        if self._loader is None or self._settings != (num_workers, pin_memory):
            # the loader draws its worker seeds from this generator, not from the global RNG, so a
            # resumed run draws the same model randomness (e.g. drop_path) as an uninterrupted one
            generator = torch.Generator().manual_seed(self._batches.seed * 100_003)
            self._loader = DataLoader(self._dataset, batch_sampler=self._blocks, collate_fn=self._collate,
                                      num_workers=num_workers, pin_memory=pin_memory, generator=generator,
                                      persistent_workers=num_workers > 0,
                                      prefetch_factor=PREFETCH_BATCHES if num_workers > 0 else None)
            self._settings = (num_workers, pin_memory)
        return self._loader


class LoaderData:
    """The loader pipeline: augmentation per sample in DataLoader workers, which are started once
    and kept across epochs, prefetching (and pinning, on CUDA) batches. With `normalise` the workers
    give uint8 views, which are moved to `device` and normalised there."""

    pipeline = "loader"

    def __init__(self, dataset: TransformedDataset, batches: EpochBatches, num_classes: int, num_images: int,
                 normalise: Normalise | None = None, device: torch.device | str = "cpu"):
        self.dataset, self.batches, self.num_classes, self.num_images = dataset, batches, num_classes, num_images
        self.normalise, self.device = normalise, torch.device(device)
        self._persistent = _PersistentLoader(dataset, batches, collate_keep_size)

    def loader(self, epoch: int, start: int, num_workers: int, pin_memory: bool):
        self.dataset.set_epoch(epoch)  # in shared memory: the kept workers see it
        batches = self._persistent.epoch(epoch, start, num_workers, pin_memory)
        return batches if self.normalise is None else (self._normalised(batch) for batch in batches)

    def _normalised(self, batch: Batch) -> Batch:
        if batch.images is None:
            return batch
        views = batch.images if isinstance(batch.images, list) else [batch.images]
        views = [self.normalise(v.to(self.device, non_blocking=True)) for v in views]
        return replace(batch, images=views if isinstance(batch.images, list) else views[0])


PREFETCH_BATCHES = 4  # per worker


class DevicePretrainData:
    """The device pipeline: the decoded uint8 images on the training device, each batch's views
    built there by BatchAugment from per-sample parameters keyed by (seed, epoch, index)."""

    pipeline = "device"

    def __init__(self, decoded: DecodedImages, labels: np.ndarray, augment: BatchAugment, as_list: bool,
                 batches: EpochBatches, num_classes: int, device: torch.device):
        self.pixels = decoded.pixels.to(device)
        self.labels = torch.tensor(np.asarray(labels), dtype=torch.int64, device=device)
        self.bad = np.zeros(len(labels), dtype=bool)
        self.bad[list(decoded.bad_files)] = True
        self.bad_files = decoded.bad_files
        self.augment, self.as_list, self.batches = augment, as_list, batches
        self.num_classes, self.num_images = num_classes, len(labels)

    def loader(self, epoch: int, start: int, num_workers: int = 0, pin_memory: bool = False):
        """The epoch's batches from step `start` on (workers and pinning do not apply here)."""
        for block in self.batches.for_epoch(epoch, start):
            yield self.batch(block, epoch)

    def batch(self, block: list[int], epoch: int) -> Batch:
        block = np.asarray(block, dtype=np.int64)
        indices = keep_size(block, self.bad[block])
        bad_files = [self.bad_files[int(i)] for i in block[self.bad[block]]]
        at = torch.from_numpy(indices).to(self.pixels.device)
        views = self.augment.views(self.pixels.index_select(0, at), indices, epoch)
        return Batch(views if self.as_list else views[0], self.labels.index_select(0, at), bad_files)


class DecodeOnDevicePretrainData:
    """The loader pipeline with data.decode_on_device: workers read image files, the training device
    decodes them (torchvision.io.decode_jpeg) and builds the views with BatchAugment."""

    pipeline = "loader (decode on device)"

    def __init__(self, paths: list[str], labels: np.ndarray, augment: BatchAugment, as_list: bool,
                 batches: EpochBatches, num_classes: int, device: torch.device, skip_bad_images: bool):
        self.paths, self.labels = paths, torch.tensor(np.asarray(labels), dtype=torch.int64, device=device)
        self.augment, self.as_list, self.batches, self.device = augment, as_list, batches, device
        self.num_classes, self.num_images, self.skip_bad_images = num_classes, len(paths), skip_bad_images
        self._persistent = _PersistentLoader(EncodedFiles(paths), batches, collate_encoded)

    def loader(self, epoch: int, start: int, num_workers: int, pin_memory: bool):
        for encoded in self._persistent.epoch(epoch, start, num_workers, pin_memory=False):
            indices = [i for i, _ in encoded]
            images = decode_on(self.device, [data for _, data in encoded], [self.paths[i] for i in indices],
                               self.skip_bad_images)
            keep = keep_size(indices, [isinstance(im, BadSample) for im in images])
            by_index = dict(zip(indices, images))
            views = self.augment.views([by_index[int(i)] for i in keep], keep, epoch)
            at = torch.from_numpy(keep).to(self.device)
            yield Batch(views if self.as_list else views[0], self.labels.index_select(0, at),
                        [by_index[i].path for i in indices if isinstance(by_index[i], BadSample)])


def keep_size(block, bad) -> np.ndarray:
    """As collate_keep_size: the good samples of `block` in order, then repeats of them in place of
    the bad ones, so every process keeps its batch size."""
    block, bad = np.asarray(block, dtype=np.int64), np.asarray(bad, dtype=bool)
    if not bad.any():
        return block
    good = block[~bad]
    if not len(good):
        raise DataError(f"every image of a batch of {len(block)} failed to decode; check the dataset files")
    return np.concatenate([good, good[np.arange(len(block) - len(good)) % len(good)]])


PipelineData = "LoaderData | DevicePretrainData | DecodeOnDevicePretrainData"  # each has .pipeline, .loader()


def build_pretrain_data(cfg: Config, world: int, rank: int, device: torch.device | str = "cpu") -> PipelineData:
    """The pretraining batches of process `rank` of `world`, through `data.pipeline`; `device` is
    where the device pipeline keeps the images and builds the batches."""
    raw = _pretrain_pool(cfg, world)
    mean, std = dataset_stats(cfg.data.name)
    labels = np.asarray(raw.labels)
    num_classes = int(raw.num_classes) if (labels >= 0).any() else 0
    batches = pretrain_batches(cfg, raw, world, rank)
    if cfg.data.decode_on_device:
        paths = sample_paths(raw)
        if paths is None:
            raise ConfigError(f"data.decode_on_device needs a dataset of image files (imagefolder, tiny-imagenet, imagenet, imagenet100), "
                              f"not {cfg.data.name!r}; leave it off")
        return DecodeOnDevicePretrainData(paths, labels, _batch_augment(cfg, mean, std), _views_as_list(cfg), batches,
                                          num_classes, torch.device(device), cfg.data.skip_bad_images)
    decoded = _device_images(cfg, raw, rank)
    if decoded is None:
        if cfg.data.jpeg_draft is not False and sample_paths(raw) is not None:
            dataset = DraftCropDataset(raw, pretrain_view_specs(cfg), cfg.train.seed, _views_as_list(cfg),
                                       cfg.data.skip_bad_images)
            return LoaderData(dataset, batches, num_classes, len(raw), Normalise(mean, std), device)
        dataset = TransformedDataset(raw, pretrain_views(cfg, mean, std), seed=cfg.train.seed)
        return LoaderData(dataset, batches, num_classes, len(raw))
    if cfg.data.jpeg_draft:
        raise ConfigError("data.jpeg_draft=true crops JPEGs in the loader pipeline, but data.pipeline 'auto' chose "
                          "'device' (the decoded images fit data.device_memory_gb); set data.pipeline: loader, or drop "
                          "data.jpeg_draft (--set data.jpeg_draft=null)")
    return DevicePretrainData(decoded, labels, _batch_augment(cfg, mean, std), _views_as_list(cfg), batches,
                              num_classes, torch.device(device))


def _batch_augment(cfg: Config, mean, std) -> BatchAugment:
    return BatchAugment(pretrain_view_specs(cfg), mean, std, seed=cfg.train.seed)


def _views_as_list(cfg: Config) -> bool:
    """A list of view tensors (else one tensor), as the loader pipeline's transforms give."""
    return cfg.data.augmentation == "msn" or cfg.data.num_views > 1


def _pretrain_pool(cfg: Config, world: int):
    raw = load_dataset(cfg.data.name, "pretrain", cfg.data.root, download=cfg.data.download,
                       skip_bad_images=cfg.data.skip_bad_images, columns=cfg.data.hf_columns())
    if cfg.data.subset is not None and cfg.data.subset < len(raw):
        # a random subset: folders are sorted by class, so "the first N" would drop classes
        chosen = np.random.default_rng(cfg.train.seed).choice(len(raw), cfg.data.subset, replace=False)
        raw = raw.subset(np.sort(chosen).tolist())
    needed = cfg.optim.batch_size * world
    if len(raw) < needed:
        raise DataError(f"dataset {cfg.data.name!r} has {len(raw)} images, fewer than one global batch "
                        f"({cfg.optim.batch_size} x {world} processes); lower optim.batch_size")
    return raw


def _device_images(cfg: Config, raw, rank: int) -> DecodedImages | None:
    """The decoded images when `data.pipeline` is device, or auto and they fit
    `data.device_memory_gb`; None for the loader pipeline."""
    d = cfg.data
    if d.pipeline == "loader":
        return None
    nbytes = decoded_nbytes(raw)
    budget = d.device_memory_gb * 2**30
    if d.pipeline == "auto" and (nbytes is None or nbytes > budget):
        return None
    cache_dir = d.cache_dir or (Path(os.path.expanduser(d.root)) / ".mimreg-cache" if d.root else None)
    try:
        decoded = decode_images(raw, cache_dir, f"{d.name}-pretrain", d.num_workers)
    except MixedSizesError as exc:
        if d.pipeline == "device":
            raise
        if rank == 0:
            say(f"data.pipeline auto: using the loader pipeline ({exc})")
        return None
    if decoded.bad_files and not d.skip_bad_images:  # a cache written with skip_bad_images: true
        path = next(iter(decoded.bad_files.values()))
        raise DataError(f"Image file {path} could not be decoded. Delete or replace the file, or set "
                        "data.skip_bad_images: true to skip it.")
    return decoded


def pretrain_view_specs(cfg: Config) -> list[ViewSpec]:
    """The views of `data.augmentation`, as both pipelines build them."""
    d = cfg.data
    if d.augmentation == "msn":
        return msn_view_specs(cfg.img_size, d.focal_views, msn_focal_size(cfg), d.blur)
    if d.augmentation == "simclr":
        return [simclr_view(cfg.img_size, tuple(d.crop_scale), d.hflip, d.blur)] * d.num_views
    return [mae_view(cfg.img_size, tuple(d.crop_scale), d.hflip)] * d.num_views


def msn_focal_size(cfg: Config) -> int:
    """data.focal_size, or 96/224 of the image size rounded to the patch (as MSN's 96 px at 224; to
    the pixel on a ResNet, which has no patches: LeJEPA's local views there)."""
    patch = cfg.model.patch_size or 1
    return cfg.data.focal_size or patch * max(1, round(cfg.img_size * 96 / 224 / patch))


def pretrain_views(cfg: Config, mean, std):
    """The PIL augmentation of `data.augmentation`, applied `data.num_views` times when more than once."""
    d = cfg.data
    if d.augmentation == "msn":
        return msn_views(cfg.img_size, d.focal_views, msn_focal_size(cfg), d.blur, mean, std)
    spec = pretrain_view_specs(cfg)[0]
    transform = view_transform(spec, mean, std)
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
