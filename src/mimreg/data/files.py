"""Datasets of image files on disk, decoded lazily (imagefolder, Tiny ImageNet)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from mimreg.data.base import BadSample, RawDataset, SubsetDataset
from mimreg.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def is_image_file(name: str) -> bool:
    # Dot-files are skipped: macOS leaves undecodable "._x.jpg" companions in copied folders.
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def walk_once(folder: Path):
    """os.walk following links, in sorted order, without dot-folders, listing each real folder once:
    a link to a folder already listed (a link loop, or a second way in) is not entered again."""
    visited, skipped = set(), []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in visited:
            dirnames[:] = []
            skipped.append(dirpath)
            continue
        visited.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        yield dirpath, dirnames, sorted(filenames)
    if skipped:
        print(f"warning: {folder}: {len(skipped)} links to folders already listed were not followed "
              f"(e.g. {skipped[0]}, a link loop or a second link to one folder)", file=sys.stderr)


def list_image_files(folder: Path, recursive: bool = True) -> list[str]:
    """Paths of the image files in `folder` (and below it when `recursive`, each real folder once), sorted."""
    if not recursive:
        with os.scandir(folder) as entries:
            return sorted(e.path for e in entries if e.is_file() and is_image_file(e.name))
    return sorted(os.path.join(dirpath, f) for dirpath, _, filenames in walk_once(folder)
                  for f in filenames if is_image_file(f))


def count_once(listing: dict[Path, list[str]]) -> dict[Path, list[str]]:
    """The image files of each folder with every real file kept once (a warning says how many links
    were left out). A file found both where it lives and through a link keeps the path where it
    lives (so a link from one class folder into another does not relabel its images); otherwise the
    first folder's path."""
    def through_link(folder: Path, path: str) -> bool:
        return os.path.realpath(path) != os.path.join(os.path.realpath(folder), os.path.relpath(path, folder))

    seen, kept = set(), {folder: [] for folder in listing}
    for linked in (False, True):
        for folder, paths in listing.items():
            for path in paths:
                real = os.path.realpath(path)
                if through_link(folder, path) == linked and real not in seen:
                    seen.add(real)
                    kept[folder].append(path)
    dropped = sum(map(len, listing.values())) - len(seen)
    if dropped:
        print(f"warning: {dropped} links to image files already counted were left out (each file is "
              f"counted once), e.g. in {next(f for f in listing if len(kept[f]) < len(listing[f]))}", file=sys.stderr)
    return {folder: sorted(paths) for folder, paths in kept.items()}


# Pillow's modes for 16-bit grayscale (a 16-bit PNG opens as I;16; "I" is 32-bit, which older
# Pillows and some formats use for it). 16-bit colour PNGs already open as 8-bit RGB (high bytes).
SIXTEEN_BIT_GRAY_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")


def decode_rgb(path: str) -> Image.Image:
    """Read an image file fully into memory as RGB (raises whatever the decoder raises)."""
    with Image.open(path) as image:
        return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """An opened image decoded as RGB."""
    # Palette transparency must pass through RGBA, or Pillow warns on every image.
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in SIXTEEN_BIT_GRAY_MODES:
        # convert("RGB") would clip at 255 (a 16-bit photo turns white): keep the high byte
        values = np.clip(np.asarray(image, dtype=np.int64), 0, 65535)
        return Image.fromarray((values >> 8).astype(np.uint8)).convert("RGB")
    return image.convert("RGB")


class ImageFileDataset(RawDataset):
    """One image file per sample; files are only opened in `__getitem__`."""

    def __init__(self, paths: Sequence[str], labels: np.ndarray, classes: Sequence[str],
                 skip_bad_images: bool = False):
        if len(paths) != len(labels):
            raise ValueError(f"{len(paths)} paths but {len(labels)} labels")
        super().__init__(labels, classes)
        # One numpy bytes array instead of a list of str: forked DataLoader workers touching
        # millions of Python objects would copy their pages (refcounts), a flat buffer is not.
        self.paths = np.asarray([os.fsencode(p) for p in paths], dtype=np.bytes_)
        self.skip_bad_images = skip_bad_images

    def __getitem__(self, index: int) -> tuple[Image.Image, int] | BadSample:
        path = os.fsdecode(self.paths[index])
        try:
            image = decode_rgb(path)
        # Decoders raise many unrelated types (OSError, SyntaxError, struct.error, ...);
        # any of them means this one file is unusable.
        except Exception as exc:
            if self.skip_bad_images:
                return BadSample(path)
            raise undecodable(path, exc) from exc
        return image, int(self.labels[index])


def undecodable(path: str, exc: Exception) -> DataError:
    """The error for an image file no decoder could read, naming the ways past it."""
    return DataError(
        f"Image file {path} could not be decoded ({type(exc).__name__}: {exc}). "
        "Delete or replace the file, or skip such files: set data.skip_bad_images: true to "
        "pretrain, pass --skip-bad-images to mimreg eval linear/knn/erank/lowshot/robustness/finetune."
    )


def sample_paths(raw: RawDataset) -> list[str] | None:
    """The file of every sample of an ImageFileDataset (or a subset of one); None for other datasets."""
    if isinstance(raw, SubsetDataset) and isinstance(raw.parent, ImageFileDataset):
        return [os.fsdecode(p) for p in raw.parent.paths[raw.indices]]
    if isinstance(raw, ImageFileDataset):
        return [os.fsdecode(p) for p in raw.paths]
    return None
