"""The dataset contract every loader returns: PIL images plus labels known up front."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from mimreg.errors import DataError

UNLABELED = -1


@dataclass(frozen=True)
class BadSample:
    """Stands in for an image file that would not decode (only with skip_bad_images)."""

    path: str


def decode_sample(name: str, read: Callable[[], Image.Image], skip_bad_images: bool) -> Image.Image | BadSample:
    """`read()`'s image decoded now, in RGB; where no decoder can read it, a BadSample (with
    skip_bad_images) or a one-line DataError naming the sample and the way past it."""
    try:
        image = read()
        image.load()
    except Exception as exc:  # decoders raise many unrelated types; any of them means this sample is unusable
        if skip_bad_images:
            return BadSample(name)
        raise DataError(f"Image {name} could not be decoded ({type(exc).__name__}: {exc}). Replace it, or set "
                        "data.skip_bad_images: true to skip it.") from exc
    return image.convert("RGB")


class RawDataset(Dataset):
    """Images as RGB PIL images with integer labels (-1 when unknown).

    `labels` is available without decoding anything, so callers can pick stratified
    subsets cheaply; `__getitem__` returns `(PIL.Image, int)` or a `BadSample`.
    """

    def __init__(self, labels: np.ndarray, classes: Sequence[str]):
        # Copied, so that freezing it cannot affect an array the caller still owns.
        self.labels = np.array(labels, dtype=np.int64).reshape(-1)
        self.labels.setflags(write=False)
        self.classes = list(classes)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Image.Image, int] | BadSample:
        raise NotImplementedError

    def subset(self, indices: Sequence[int] | np.ndarray) -> RawDataset:
        """The samples at `indices`, in that order, keeping labels and class names."""
        return SubsetDataset(self, indices)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(len={len(self)}, num_classes={self.num_classes})"


class SubsetDataset(RawDataset):
    """A view on some samples of another RawDataset."""

    def __init__(self, parent: RawDataset, indices: Sequence[int] | np.ndarray):
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(indices) and (indices.min() < -len(parent) or indices.max() >= len(parent)):
            raise IndexError(f"subset indices out of range for a dataset of {len(parent)} samples")
        indices = indices % max(len(parent), 1)
        # Flatten nested subsets so lookups stay one hop deep.
        if isinstance(parent, SubsetDataset):
            indices = parent.indices[indices]
            parent = parent.parent
        self.parent = parent
        self.indices = indices
        super().__init__(parent.labels[indices], parent.classes)

    def __getitem__(self, index: int):
        return self.parent[int(self.indices[index])]


class ConcatRawDataset(RawDataset):
    """Several RawDatasets that share one class list, one after the other."""

    def __init__(self, parts: Sequence[RawDataset], classes: Sequence[str]):
        self.parts = list(parts)
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])
        super().__init__(np.concatenate([p.labels for p in self.parts]), classes)

    def __getitem__(self, index: int):
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        part = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return self.parts[part][index - int(self.offsets[part])]
