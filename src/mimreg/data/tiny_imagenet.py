"""Tiny ImageNet (200 classes, 64x64) in its official extracted layout; test = val. The classes
are named by words.txt (the wnid where it has no name)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mimreg.data.base import RawDataset
from mimreg.data.files import ImageFileDataset, list_image_files
from mimreg.data.folder import class_folders
from mimreg.data.wordnet import wnid_names
from mimreg.errors import DataError

FOLDER_NAME = "tiny-imagenet-200"
ARCHIVE_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"


def find_tiny_imagenet(root: Path) -> Path:
    """ROOT itself or ROOT/tiny-imagenet-200, whichever has train/ and val/."""
    for candidate in (root, root / FOLDER_NAME):
        if (candidate / "train").is_dir() and (candidate / "val").is_dir():
            return candidate
    raise DataError(
        f"Tiny ImageNet not found: looked for train/ and val/ in {root} and in {root / FOLDER_NAME}. "
        f"Download {ARCHIVE_URL} and extract it into {root} (data.download cannot fetch it)."
    )


def read_wnids(base: Path) -> list[str]:
    """Class ids from wnids.txt, or the sorted train folder names when it is absent."""
    wnids_file = base / "wnids.txt"
    if wnids_file.is_file():
        wnids = [line.strip() for line in wnids_file.read_text().splitlines() if line.strip()]
    else:
        wnids = class_folders(base / "train")
    if not wnids:
        raise DataError(f"No classes found in {wnids_file} or {base / 'train'}. Re-extract {ARCHIVE_URL}.")
    return wnids


def read_val_annotations(base: Path, wnids: list[str]) -> tuple[list[str], list[int]]:
    """(paths, labels) of val/images from the tab-separated val/val_annotations.txt."""
    annotations = base / "val" / "val_annotations.txt"
    if not annotations.is_file():
        raise DataError(
            f"Tiny ImageNet labels file {annotations} is missing. Re-extract {ARCHIVE_URL} there."
        )
    index_of = {wnid: i for i, wnid in enumerate(wnids)}
    paths, labels = [], []
    for line_number, line in enumerate(annotations.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in index_of:
            raise DataError(
                f"Line {line_number} of {annotations} is not 'filename<TAB>wnid<TAB>...' with a "
                f"known wnid: {line!r}. Re-extract {ARCHIVE_URL}."
            )
        paths.append(str(base / "val" / "images" / fields[0]))
        labels.append(index_of[fields[1]])
    return paths, labels


def load_tiny_imagenet(split: str, root: Path, *, download: bool = False,
                       skip_bad_images: bool = False) -> RawDataset:
    base = find_tiny_imagenet(root)
    wnids = read_wnids(base)
    if split == "test":
        paths, labels = read_val_annotations(base, wnids)
    else:
        paths, labels = [], []
        for label, wnid in enumerate(wnids):
            image_folder = base / "train" / wnid / "images"
            if not image_folder.is_dir():
                raise DataError(
                    f"Tiny ImageNet class folder {image_folder} is missing (listed in wnids.txt). "
                    f"Re-extract {ARCHIVE_URL}."
                )
            found = list_image_files(image_folder, recursive=False)
            paths.extend(found)
            labels.extend([label] * len(found))
    if not paths:
        raise DataError(f"No {split} images found in {base}. Re-extract {ARCHIVE_URL} there.")
    return ImageFileDataset(paths, np.asarray(labels), wnid_names(base / "words.txt", wnids), skip_bad_images)
