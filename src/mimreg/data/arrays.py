"""Datasets held as uint8 pixel arrays (CIFAR, STL-10, digits, synthetic)."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from PIL import Image

from mimreg.data.base import RawDataset

# How to turn one stored image into height x width x channel order.
_TO_HWC = {"HWC": None, "CHW": (1, 2, 0), "CWH": (2, 1, 0)}


class MemmapImages:
    """A read-only uint8 array of images in a raw file, opened on first use.

    Pickling an np.memmap copies its whole contents; this sends only the path, so
    DataLoader workers started with `spawn` reopen the file instead of copying gigabytes.
    """

    def __init__(self, path: str | os.PathLike, image_shape: tuple[int, ...]):
        self.path = os.fspath(path)
        self.image_shape = tuple(image_shape)
        self.count = os.path.getsize(self.path) // int(np.prod(self.image_shape))
        self._array: np.memmap | None = None

    def _open(self) -> np.memmap:
        if self._array is None:
            self._array = np.memmap(self.path, dtype=np.uint8, mode="r",
                                    shape=(self.count, *self.image_shape))
        return self._array

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index):
        return self._open()[index]

    def __getstate__(self):
        return {**self.__dict__, "_array": None}


class ArrayDataset(RawDataset):
    """Images from a uint8 array of shape (N, ...) in the given per-image `layout`.

    `layout` is "HWC", "CHW", or "CWH" (column-major channels, as STL-10 stores them);
    images with one channel are replicated to RGB.
    """

    def __init__(self, images, labels: np.ndarray, classes: Sequence[str], layout: str = "HWC"):
        if layout not in _TO_HWC:
            raise ValueError(f"layout must be one of {sorted(_TO_HWC)}, got {layout!r}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        super().__init__(labels, classes)
        self.images = images
        self.layout = layout

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        pixels = np.asarray(self.images[index])
        order = _TO_HWC[self.layout]
        if order is not None:
            pixels = pixels.transpose(order)
        if pixels.shape[-1] == 1:
            pixels = np.repeat(pixels, 3, axis=-1)
        image = Image.fromarray(np.ascontiguousarray(pixels))
        return image, int(self.labels[index])
