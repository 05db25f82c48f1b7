"""Dataset names and splits, mapped to their loaders."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from mimreg.data.base import RawDataset
from mimreg.data.cifar import load_cifar10, load_cifar100
from mimreg.data.digits import load_digits_dataset
from mimreg.data.folder import load_imagefolder
from mimreg.data.hf import HFColumns, load_hf
from mimreg.data.imagenet import load_imagenet, load_imagenet100
from mimreg.data.shards import load_shards
from mimreg.data.stl10 import load_stl10
from mimreg.data.synthetic import load_synthetic
from mimreg.data.tiny_imagenet import load_tiny_imagenet
from mimreg.errors import DataError

SPLITS = ("pretrain", "train", "test")

# Each loader: (split, root, *, download, skip_bad_images) -> RawDataset.
LOADERS: dict[str, Callable[..., RawDataset]] = {
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "stl10": load_stl10,
    "tiny-imagenet": load_tiny_imagenet,
    "imagenet": load_imagenet,
    "imagenet100": load_imagenet100,
    "imagefolder": load_imagefolder,
    "hf": load_hf,  # also takes `columns`
    "webdataset": load_shards,
    "digits": load_digits_dataset,
    "synthetic": load_synthetic,
}
DATASET_NAMES: tuple[str, ...] = tuple(LOADERS)
BUILTIN_DATASETS = ("digits", "synthetic")  # generated in memory; data.root is ignored


def load_dataset(name: str, split: str, root: str | os.PathLike | None = None, *,
                 download: bool = False, skip_bad_images: bool = False,
                 columns: HFColumns | None = None) -> RawDataset:
    """The `split` ("pretrain", "train" or "test") of dataset `name`, read from `root`.

    `pretrain` is the image pool for self-supervised training: train plus the unlabelled
    images for stl10 (label -1), the train split for every other dataset. `columns` names the
    image and label columns and the splits of an `hf` dataset (data.hf_*); others ignore it.
    """
    if name not in LOADERS:
        raise DataError(f"Unknown dataset {name!r}. Set data.name to one of: {', '.join(DATASET_NAMES)}.")
    if split not in SPLITS:
        raise DataError(f"Unknown split {split!r} for dataset {name}. Use one of: {', '.join(SPLITS)}.")
    if name in BUILTIN_DATASETS:
        return LOADERS[name](split, None, download=download, skip_bad_images=skip_bad_images)
    if root is None or str(root) == "":
        raise DataError(
            f"Dataset {name} needs a data folder but data.root is not set. Set data.root to the "
            "folder that holds (or should receive) the dataset."
        )
    path = Path(os.path.expanduser(os.fspath(root)))
    extra = {"columns": columns} if name == "hf" else {}
    return LOADERS[name](split, path, download=download, skip_bad_images=skip_bad_images, **extra)
