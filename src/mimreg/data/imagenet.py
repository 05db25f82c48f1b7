"""ImageNet-1k (ILSVRC2012) and ImageNet-100 from the standard train/val folders.

ROOT/train/<wnid>/*.JPEG, and ROOT/val either as ROOT/val/<wnid>/*.JPEG or flat with a label
file: the Kaggle release's LOC_val_solution.csv or a `val_labels.txt` of "filename wnid" lines.
The Kaggle tree (ROOT/ILSVRC/Data/CLS-LOC/{train,val}) is found too. Class index = position of
the wnid in sorted order, as torchvision's ImageFolder gives. Classes are named by the Kaggle
release's LOC_synset_mapping.txt or a synset_words.txt beside train/ or its ILSVRC folder (the wnid
where there is none).
"""

from __future__ import annotations

import csv
from importlib import resources
from pathlib import Path

import numpy as np

from mimreg.data.base import RawDataset
from mimreg.data.files import ImageFileDataset, list_image_files
from mimreg.data.folder import class_folders
from mimreg.data.wordnet import wnid_names
from mimreg.errors import DataError

LAYOUT = ("ROOT/train/<wnid>/*.JPEG and ROOT/val/<wnid>/*.JPEG (or ROOT/val/*.JPEG with "
          "LOC_val_solution.csv or val_labels.txt)")
KAGGLE_SUBDIR = Path("ILSVRC") / "Data" / "CLS-LOC"
VAL_LABEL_FILES = ("LOC_val_solution.csv", "val_labels.txt")
DEVKIT_GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"
NAME_FILES = ("LOC_synset_mapping.txt", "synset_words.txt")  # "<wnid> <names>" lines


def imagenet100_wnids() -> list[str]:
    """The 100 wnids of ImageNet-100 (CMC's list, shipped in data/lists/imagenet100.txt), sorted."""
    text = resources.files("mimreg.data").joinpath("lists/imagenet100.txt").read_text()
    return sorted(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))


def find_imagenet(root: Path) -> Path:
    """ROOT, or the Kaggle release's ROOT/ILSVRC/Data/CLS-LOC, whichever has train/."""
    for base in (root, root / KAGGLE_SUBDIR):
        if (base / "train").is_dir():
            return base
    raise DataError(f"ImageNet not found: {root / 'train'} does not exist. Set data.root to a folder laid out as "
                    f"{LAYOUT}; mimreg cannot download ImageNet.")


def pick_imagenet100(train: Path) -> list[str]:
    """ImageNet-100's wnids, all of which must be class folders of `train` (a full ImageNet or
    a tree already cut to these 100)."""
    wanted = imagenet100_wnids()
    missing = sorted(set(wanted) - set(class_folders(train)))
    if missing:
        raise DataError(f"{train} lacks {len(missing)} of the 100 ImageNet-100 classes (e.g. {', '.join(missing[:5])}). "
                        "Set data.root to a full ImageNet train/val tree or one holding exactly the classes of "
                        "mimreg/data/lists/imagenet100.txt.")
    return wanted


def scan_classes(folder: Path, wnids: list[str]) -> tuple[list[str], list[int]]:
    """(paths, labels) of the images in folder/<wnid>/ for each of `wnids`."""
    paths, labels = [], []
    for label, wnid in enumerate(wnids):
        if not (folder / wnid).is_dir():
            raise DataError(f"ImageNet class folder {folder / wnid} is missing (it is a train class). "
                            f"Lay out {folder} as <wnid>/*.JPEG for every train class.")
        found = list_image_files(folder / wnid, recursive=False)
        paths.extend(found)
        labels.extend([label] * len(found))
    return paths, labels


def read_val_labels(val: Path, places: list[Path]) -> dict[str, str]:
    """{file name: wnid} from the first label file found in `places` (LOC_val_solution.csv or val_labels.txt)."""
    for folder in places:
        kaggle, plain = folder / VAL_LABEL_FILES[0], folder / VAL_LABEL_FILES[1]
        if kaggle.is_file():
            with open(kaggle, newline="") as f:
                # ImageId, then "wnid x0 y0 x1 y1 ..." (one box per object, all of the image's class)
                return {row["ImageId"] + ".JPEG": row["PredictionString"].split()[0] for row in csv.DictReader(f)}
        if plain.is_file():
            pairs = [line.split() for line in plain.read_text().splitlines() if line.strip()]
            bad = next((p for p in pairs if len(p) != 2), None)
            if bad is not None:
                raise DataError(f"{plain} has a line {' '.join(bad)!r}; write one 'filename wnid' pair per line.")
            return dict(pairs)
    devkit = next((f / DEVKIT_GROUND_TRUTH for f in places if (f / DEVKIT_GROUND_TRUTH).is_file()), None)
    hint = (f" ({devkit} numbers classes in the devkit's meta.mat order, which mimreg does not read)"
            if devkit else "")
    raise DataError(f"{val} holds images but no class folders and no label file{hint}. Add {val}/val_labels.txt "
                    "with one 'ILSVRC2012_val_00000001.JPEG n01751748' line per image (or the Kaggle "
                    "LOC_val_solution.csv), or sort the images into val/<wnid>/ folders.")


def scan_flat_val(val: Path, wnids: list[str], places: list[Path], keep_all: bool) -> tuple[list[str], list[int]]:
    """(paths, labels) of a flat val folder. `keep_all`: every image must be labelled with a
    train class (ImageNet-1k); else images of other classes are left out (ImageNet-100)."""
    labels_of = read_val_labels(val, places)
    index_of = {wnid: i for i, wnid in enumerate(wnids)}
    files = {Path(p).name: p for p in list_image_files(val, recursive=False)}
    unlabelled = sorted(set(files) - set(labels_of))
    absent = sorted(name for name, wnid in labels_of.items() if name not in files and wnid in index_of)
    unknown = sorted({wnid for wnid in labels_of.values() if wnid not in index_of}) if keep_all else []
    for problem, names in (("have no label", unlabelled), ("are labelled but missing", absent),
                           ("are labelled with classes that are not train folders", unknown)):
        if names:
            raise DataError(f"{len(names)} val images of {val} {problem} (e.g. {names[0]}). Make the label file "
                            "and the images of val/ match, with the wnids of train/.")
    kept = sorted(name for name in files if labels_of[name] in index_of)
    return [files[name] for name in kept], [index_of[labels_of[name]] for name in kept]


def load_imagenet_split(split: str, root: Path, skip_bad_images: bool, subset_100: bool) -> RawDataset:
    base = find_imagenet(root)
    train = base / "train"
    wnids = pick_imagenet100(train) if subset_100 else class_folders(train)
    if not wnids:
        raise DataError(f"{train} has no class folders. Lay it out as {LAYOUT}.")
    if split == "test":
        val = base / "val"
        if not val.is_dir():
            raise DataError(f"ImageNet val folder {val} does not exist. Lay out {base} as {LAYOUT}.")
        if class_folders(val):
            paths, labels = scan_classes(val, wnids)
        else:
            # the Kaggle release keeps its label file next to the ILSVRC folder
            places = list(dict.fromkeys([val, base, root]))
            paths, labels = scan_flat_val(val, wnids, places, keep_all=not subset_100)
    else:
        paths, labels = scan_classes(train, wnids)
    if not paths:
        raise DataError(f"No {split} images found under {base}. Lay it out as {LAYOUT}.")
    return ImageFileDataset(paths, np.asarray(labels), wnid_names(name_file(base, root), wnids), skip_bad_images)


def name_file(base: Path, root: Path) -> Path | None:
    """The first class-name mapping file in base or root (the Kaggle release keeps it in root)."""
    return next((folder / name for folder in dict.fromkeys([base, root]) for name in NAME_FILES
                 if (folder / name).is_file()), None)


def load_imagenet(split: str, root: Path, *, download: bool = False, skip_bad_images: bool = False) -> RawDataset:
    """ImageNet-1k: every class folder of ROOT/train; test = val."""
    return load_imagenet_split(split, root, skip_bad_images, subset_100=False)


def load_imagenet100(split: str, root: Path, *, download: bool = False, skip_bad_images: bool = False) -> RawDataset:
    """ImageNet-100 (CMC's 100 classes) from a full ImageNet tree or one already cut to them."""
    return load_imagenet_split(split, root, skip_bad_images, subset_100=True)
