"""STL-10 from the extracted binary archive; pretrain = train + the 100k unlabelled images."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mimreg.data.arrays import ArrayDataset, MemmapImages
from mimreg.data.base import UNLABELED, ConcatRawDataset, RawDataset
from mimreg.errors import DataError

FOLDER = "stl10_binary"
IMAGE_SHAPE = (3, 96, 96)  # per image on disk: channel, then column-major 96x96
IMAGE_BYTES = 3 * 96 * 96
DEFAULT_CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
REEXTRACT = "Delete it and re-extract stl10_binary.tar.gz there."


def find_stl10(root: Path, download: bool) -> Path:
    """ROOT/stl10_binary, or ROOT itself if it is that folder; downloads it when asked."""
    for folder in (root / FOLDER, root):
        if (folder / "train_X.bin").is_file():
            return folder
    if not download:
        raise DataError(
            f"STL-10 not found: looked for {root / FOLDER / 'train_X.bin'}. Pass data.download: true "
            f"(needs internet, 2.6 GB) or extract stl10_binary.tar.gz into {root}."
        )
    import torchvision.datasets  # only needed for downloading

    try:
        torchvision.datasets.STL10(str(root), split="train", download=True)
    except Exception as exc:  # network failures surface as many types (URLError, OSError, ...)
        raise DataError(
            f"Downloading STL-10 into {root} failed ({exc}). Check internet access, or put the "
            f"extracted archive at {root / FOLDER} and retry."
        ) from exc
    return root / FOLDER


def image_file(path: Path) -> Path:
    if not path.is_file():
        raise DataError(f"STL-10 file {path} is missing. Re-extract stl10_binary.tar.gz there.")
    if path.stat().st_size % IMAGE_BYTES:
        raise DataError(f"STL-10 file {path} is not a whole number of 96x96x3 images. {REEXTRACT}")
    return path


def read_images(path: Path) -> np.ndarray:
    return np.fromfile(image_file(path), dtype=np.uint8).reshape(-1, *IMAGE_SHAPE)


def read_labels(path: Path, count: int, num_classes: int) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"STL-10 file {path} is missing. Re-extract stl10_binary.tar.gz there.")
    labels = np.fromfile(path, dtype=np.uint8).astype(np.int64) - 1  # stored as 1..10
    if len(labels) != count or (count and (labels.min() < 0 or labels.max() >= num_classes)):
        raise DataError(
            f"STL-10 file {path} has {len(labels)} labels (expected {count}, each in 1..{num_classes}). "
            f"{REEXTRACT}"
        )
    return labels


def read_class_names(folder: Path) -> list[str]:
    names_file = folder / "class_names.txt"
    if not names_file.is_file():
        return list(DEFAULT_CLASSES)
    return [line.strip() for line in names_file.read_text().splitlines() if line.strip()]


def load_stl10(split: str, root: Path, *, download: bool = False,
               skip_bad_images: bool = False) -> RawDataset:
    folder = find_stl10(root, download)
    classes = read_class_names(folder)
    prefix = "test" if split == "test" else "train"
    images = read_images(folder / f"{prefix}_X.bin")
    labels = read_labels(folder / f"{prefix}_y.bin", len(images), len(classes))
    labelled = ArrayDataset(images, labels, classes, layout="CWH")
    if split != "pretrain":
        return labelled
    # 2.7 GB: map the file instead of reading it.
    unlabeled_images = MemmapImages(image_file(folder / "unlabeled_X.bin"), IMAGE_SHAPE)
    unlabeled = ArrayDataset(unlabeled_images, np.full(len(unlabeled_images), UNLABELED), classes,
                             layout="CWH")
    return ConcatRawDataset([labelled, unlabeled], classes)
