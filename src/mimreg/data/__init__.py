"""Datasets, augmentations and batching for pretraining and evaluation.

`load_dataset(name, split, root)` gives a RawDataset of (PIL RGB image, label) pairs;
`TransformedDataset` applies a transform reproducibly per (seed, epoch, index);
`collate_skipping_bad` batches the result, dropping images that would not decode.
The device pipeline decodes a pool once (`decoded.decode_images`) and builds batches of views
there (`batch_augment.BatchAugment`), each sample's parameters keyed by (seed, epoch, index).
"""

from mimreg.data.base import UNLABELED, BadSample, RawDataset, SubsetDataset
from mimreg.data.collate import Batch, collate_skipping_bad
from mimreg.data.registry import DATASET_NAMES, SPLITS, load_dataset
from mimreg.data.seeded import TransformedDataset
from mimreg.data.transforms import (
    DATASET_STATS,
    IMAGENET_STATS,
    MultiView,
    dataset_stats,
    default_img_size,
    eval_crop_fraction,
    eval_transform,
    msn_views,
    pretrain_transform,
    simclr_transform,
)

__all__ = [
    "DATASET_NAMES",
    "DATASET_STATS",
    "IMAGENET_STATS",
    "MultiView",
    "SPLITS",
    "UNLABELED",
    "BadSample",
    "Batch",
    "RawDataset",
    "SubsetDataset",
    "TransformedDataset",
    "collate_skipping_bad",
    "dataset_stats",
    "default_img_size",
    "eval_crop_fraction",
    "eval_transform",
    "load_dataset",
    "msn_views",
    "pretrain_transform",
    "simclr_transform",
]
