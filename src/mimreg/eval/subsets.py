"""Labelled-image subsets of a training split, named by image file: the official low-shot lists
(SimCLR's 1% and 10% of ImageNet-1k, MSN's 1/2/5 images per class) or any user file.

A subset file lists one image per line, either a bare file name (`n01440764_10026.JPEG`, as the
official lists do) or a path relative to the dataset folder (`n01440764/n01440764_10026.JPEG`);
blank lines and lines starting with `#` are skipped.
"""

from __future__ import annotations

import os
import sys
from importlib import resources
from pathlib import Path

import numpy as np

from mimreg.data.base import RawDataset
from mimreg.data.files import sample_paths
from mimreg.errors import ConfigError, DataError

_MSN = "https://github.com/facebookresearch/msn/blob/main/imagenet_subsets{split}/{shots}imgs_class.txt"
_SIMCLR = "https://github.com/google-research/simclr/blob/master/imagenet_subsets/{name}.txt"
# Named subsets -> where the official list lives (names shipped in subset_lists/ are read from there).
NAMED = {
    "1percent": _SIMCLR.format(name="1percent"),
    "10percent": _SIMCLR.format(name="10percent"),
    **{f"{shots}img-split{split}": _MSN.format(split=split, shots=shots) for shots in (1, 2, 5) for split in (1, 2, 3)},
    # MSN's split 3 has no 5imgs_class.txt: its 3imgs_class.txt holds the 5 images per class.
    "5img-split3": _MSN.format(split=3, shots=3),
}


def shipped() -> list[str]:
    """The named subsets whose list comes with mimreg."""
    folder = resources.files("mimreg.eval") / "subset_lists"
    return sorted(name for name in NAMED if (folder / f"{name}.txt").is_file())


def subset_lines(subset: str) -> list[str]:
    """The image names of a named subset (see NAMED) or of a subset file."""
    if subset in NAMED:
        entry = resources.files("mimreg.eval") / "subset_lists" / f"{subset}.txt"
        if not entry.is_file():
            raise ConfigError(f"the subset list {subset!r} is not shipped with mimreg; download it from "
                              f"{NAMED[subset]} and pass --subset FILE")
        text = entry.read_text()
    elif Path(subset).is_file():
        text = Path(subset).read_text()
    else:
        raise ConfigError(f"--subset {subset!r} is neither a file nor a named subset; use a file listing one image "
                          f"per line, or one of {sorted(NAMED)}")
    lines = [line.strip().replace("\\", "/") for line in text.splitlines()]
    return [line.removeprefix("./") for line in lines if line and not line.startswith("#")]


def _keys(path: str, root: str | None) -> tuple[str, ...]:
    """The names a subset line may give for this image: file name, class/file, path under root."""
    parts = Path(path).parts
    keys = (parts[-1], "/".join(parts[-2:]))
    if root is not None:
        keys += (Path(os.path.relpath(path, root)).as_posix(),)
    return keys


def select_subset(raw: RawDataset, subset: str, root: str | None) -> RawDataset:
    """The samples of a file-backed dataset that the subset names, in dataset order."""
    paths = sample_paths(raw)
    if paths is None:
        raise ConfigError(f"--subset picks images by file name, but this dataset ({type(raw).__name__}) has no "
                          "image files; use a folder dataset (data: folder / imagenet)")
    wanted = set(subset_lines(subset))
    chosen, found = [], set()
    for index, path in enumerate(paths):
        hits = wanted.intersection(_keys(path, root))
        if hits:
            chosen.append(index)
            found |= hits
    if not chosen:
        raise DataError(f"none of the {len(wanted)} images of subset {subset!r} is in the dataset (e.g. "
                        f"{next(iter(wanted), '?')}); check --data-root points at the training images")
    if len(found) < len(wanted):
        print(f"warning: {len(wanted) - len(found)} of the {len(wanted)} images of subset {subset!r} are not in "
              f"the dataset, e.g. {sorted(wanted - found)[0]}", file=sys.stderr)
    return raw.subset(np.asarray(chosen, dtype=np.int64))
