"""`webdataset`: WebDataset tar shards, indexed once and read by sample (no extraction).

data.root is a folder of `*.tar` shards (the train split), or one with `train/` and `test/` (or
`val/`) folders of shards. A sample is the members that share a key (the name up to its first
dot, as WebDataset groups them): an image (.jpg .jpeg .png .webp .bmp) and optionally `.cls`, its
integer class. Each shard's member offsets are read from the tar headers (tarfile, the standard
library), so a sample is one seek and one read: a map-style dataset, found by its index, which is
what mimreg's exact resume needs (exact to the sample, not only to the shard).
"""

from __future__ import annotations

import functools
import io
import os
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from mimreg.data.base import UNLABELED, BadSample, RawDataset, SubsetDataset, decode_sample
from mimreg.errors import DataError

IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp", "bmp")
TEST_FOLDER_NAMES = ("test", "val")


def index_shard(path: Path) -> tuple[tuple[str, int, int, int], ...]:
    """(key, image offset, image size, label) of each sample of a shard, in tar order; read once per
    process while the file stays as it was (config load reads the image size, then training opens
    the shards again; the test split counts the train split's classes)."""
    stat = os.stat(path)
    return _read_index(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=None)
def _read_index(path: str, mtime_ns: int, size: int) -> tuple[tuple[str, int, int, int], ...]:
    """index_shard's work; `mtime_ns` and `size` key the cache, so a rewritten shard is read anew."""
    images: dict[str, tuple[int, int]] = {}
    labels: dict[str, int] = {}
    with tarfile.open(path) as tar:
        for member in tar:
            if not member.isfile():
                continue
            folder, name = os.path.split(member.name)
            stem, _, suffix = name.partition(".")
            key = os.path.join(folder, stem)
            if suffix.lower() in IMAGE_SUFFIXES:
                images.setdefault(key, (member.offset_data, member.size))
            elif suffix == "cls":
                text = tar.extractfile(member).read().decode().strip()
                try:
                    labels[key] = int(text)
                except ValueError:
                    raise DataError(f"{path}: {member.name} holds {text!r}, not an integer class; write the class "
                                    "index in each .cls member") from None
    return tuple((key, offset, size, labels.get(key, UNLABELED)) for key, (offset, size) in images.items())


class ShardDataset(RawDataset):
    """The samples of some tar shards, each read by seeking to its image's bytes."""

    def __init__(self, shards: list[Path], num_classes: int | None = None, skip_bad_images: bool = False):
        rows = [(shard, *entry) for shard in shards for entry in index_shard(shard)]
        if not rows:
            raise DataError(f"No images found in the shards {[str(s) for s in shards[:3]]}; a sample needs an "
                            f"image member ({', '.join('.' + s for s in IMAGE_SUFFIXES)})")
        self.shards = shards
        position = {shard: i for i, shard in enumerate(shards)}
        self.shard_of = np.array([position[r[0]] for r in rows])
        self.keys = [r[1] for r in rows]
        self.offsets = np.array([r[2] for r in rows], dtype=np.int64)
        self.sizes = np.array([r[3] for r in rows], dtype=np.int64)
        labels = np.array([r[4] for r in rows], dtype=np.int64)
        count = num_classes if num_classes is not None else int(labels.max()) + 1
        super().__init__(labels, [str(k) for k in range(count)])
        self.skip_bad_images = skip_bad_images

    def __getitem__(self, index: int):
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        shard = self.shards[self.shard_of[index]]
        image = decode_sample(f"{shard}:{self.keys[index]}", lambda: Image.open(io.BytesIO(self.read_bytes(index))),
                              self.skip_bad_images)
        return image if isinstance(image, BadSample) else (image, int(self.labels[index]))

    def read_bytes(self, index: int) -> bytes:
        """The encoded image of sample `index`: one seek and one read in its shard."""
        with open(self.shards[self.shard_of[index]], "rb") as handle:
            handle.seek(int(self.offsets[index]))
            return handle.read(int(self.sizes[index]))


def shard_of_samples(raw: RawDataset) -> np.ndarray | None:
    """The shard number of each sample of tar shards (or of a subset of them); None for other data."""
    if isinstance(raw, SubsetDataset) and isinstance(raw.parent, ShardDataset):
        return raw.parent.shard_of[raw.indices]
    return raw.shard_of if isinstance(raw, ShardDataset) else None


def shard_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.tar") if p.is_file())


def load_shards(split: str, root: Path, *, download: bool = False, skip_bad_images: bool = False) -> RawDataset:
    """ROOT/train/*.tar + ROOT/test/*.tar (or val) when ROOT/train exists, else ROOT/*.tar is train only."""
    if not root.is_dir():
        raise DataError(f"Shard folder {root} does not exist. Set data.root to a folder of .tar shards "
                        "(or with train/ and test/ folders of them).")
    has_splits = (root / "train").is_dir()
    train = shard_files(root / "train" if has_splits else root)
    if not train:
        raise DataError(f"No .tar shards in {root / 'train' if has_splits else root}; write the shards there "
                        "(e.g. with webdataset's ShardWriter) or point data.root at them")
    dataset = ShardDataset(train, skip_bad_images=skip_bad_images)
    if split in ("pretrain", "train"):
        return dataset
    test_folder = next((root / n for n in TEST_FOLDER_NAMES if (root / n).is_dir()), None)
    if not has_splits or test_folder is None or not shard_files(test_folder):
        raise DataError(f"Shard folder {root} has no test split: expected .tar shards in {root / 'train'} and "
                        f"{root / 'test'} (or {root / 'val'}). Add them to evaluate on a held-out split.")
    return ShardDataset(shard_files(test_folder), num_classes=dataset.num_classes, skip_bad_images=skip_bad_images)
