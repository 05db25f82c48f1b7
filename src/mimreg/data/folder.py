"""`imagefolder`: ROOT/<class>/<images>, optionally split into ROOT/train and ROOT/test."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mimreg.data.base import UNLABELED, RawDataset
from mimreg.data.files import ImageFileDataset, count_once, list_image_files
from mimreg.errors import DataError

TEST_FOLDER_NAMES = ("test", "val")


def class_folders(folder: Path) -> list[str]:
    """Names of the visible subfolders of `folder`, sorted (they define class indices)."""
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))


def scan_image_tree(folder: Path, skip_bad_images: bool,
                    classes: list[str] | None = None) -> ImageFileDataset:
    """Images below `folder`, labelled by class subfolder.

    `classes` fixes the class-to-index mapping (the train classes, for a test split).
    A folder holding only loose images and no subfolders gives unlabelled samples.
    """
    names = class_folders(folder)
    if not names:
        paths = count_once({folder: list_image_files(folder, recursive=False)})[folder]
        if not paths:
            raise DataError(
                f"No images found in {folder}. Put images in {folder}/<class>/ "
                f"(extensions .jpg .jpeg .png .bmp .webp) or set data.root to the folder that has them."
            )
        if classes:
            raise DataError(
                f"{folder} has loose images but no class subfolders, while the train split has "
                f"classes {classes}. Sort the images into {folder}/<class>/ folders."
            )
        return ImageFileDataset(paths, np.full(len(paths), UNLABELED), [], skip_bad_images)

    if classes is None:
        classes = names
    unknown = sorted(set(names) - set(classes))
    if unknown:
        raise DataError(
            f"{folder} has class folders {unknown} that the train split does not have. "
            f"Use the same class folder names in train and test (train classes: {classes})."
        )
    paths, labels = [], []
    listing = count_once({folder / name: list_image_files(folder / name) for name in names})
    for name in names:
        found = listing[folder / name]
        paths.extend(found)
        labels.extend([classes.index(name)] * len(found))
    if not paths:
        raise DataError(
            f"No images found in the class folders of {folder} ({', '.join(names)}). "
            "Put .jpg/.jpeg/.png/.bmp/.webp files in them or point data.root elsewhere."
        )
    return ImageFileDataset(paths, np.asarray(labels), classes, skip_bad_images)


def load_imagefolder(split: str, root: Path, *, download: bool = False,
                     skip_bad_images: bool = False) -> RawDataset:
    """ROOT/train + ROOT/test (or ROOT/val) when ROOT/train exists, else ROOT is train only."""
    if not root.is_dir():
        raise DataError(
            f"Image folder {root} does not exist. Set data.root to a folder laid out as "
            "ROOT/<class>/<images> or ROOT/train/<class>/<images> + ROOT/test/<class>/<images>."
        )
    train_folder = root / "train"
    has_splits = train_folder.is_dir()
    if split in ("pretrain", "train"):
        return scan_image_tree(train_folder if has_splits else root, skip_bad_images)

    test_folder = next((root / n for n in TEST_FOLDER_NAMES if (root / n).is_dir()), None)
    if not has_splits or test_folder is None:
        raise DataError(
            f"Image folder {root} has no test split: expected {root / 'train'} and {root / 'test'} "
            f"(or {root / 'val'}) subfolders, each with <class>/<images>. Add them to evaluate "
            "on a held-out split."
        )
    # Only the train folder names are needed for the mapping; no need to list its files.
    return scan_image_tree(test_folder, skip_bad_images, classes=class_folders(train_folder))
