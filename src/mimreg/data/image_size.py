"""The training resolution of a folder of images, read from a few files' headers."""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image

from mimreg.data.files import is_image_file, walk_once
from mimreg.errors import ConfigError, DataError


def sample_image_files(folder: Path, per_folder: int = 4, max_folders: int = 16) -> list[str]:
    """Up to `per_folder` images from each of the first `max_folders` folders (class folders are
    sorted, so the sample spans several classes) without listing the whole tree."""
    picked: list[str] = []
    folders = 0
    for dirpath, _, filenames in walk_once(folder):
        images = [f for f in filenames if is_image_file(f)][:per_folder]
        if images:
            picked += [os.path.join(dirpath, f) for f in images]
            folders += 1
            if folders >= max_folders:
                break
    return picked


def infer_image_size(root: str | os.PathLike) -> int:
    """The side of the square images of an `imagefolder` (ROOT/train when it exists), or a
    ConfigError naming data.img_size when the sampled images are not all one square size."""
    root = Path(os.path.expanduser(os.fspath(root)))
    folder = root / "train" if (root / "train").is_dir() else root
    if not folder.is_dir():
        raise DataError(f"Image folder {root} does not exist. Set data.root to a folder laid out as "
                        "ROOT/<class>/<images> (or ROOT/train/<class>/<images>), or set data.img_size.")
    seen: dict[tuple[int, int], str] = {}
    for path in sample_image_files(folder):
        try:
            with Image.open(path) as image:  # reads the header only
                seen.setdefault(image.size, path)
        except Exception as exc:  # any decoder error means this file cannot tell its size
            raise DataError(f"Image file {path} could not be read ({type(exc).__name__}: {exc}); "
                            "delete or replace it, or set data.img_size") from exc
    if not seen:
        raise DataError(f"No images found in {folder}; put images in {folder}/<class>/ or set data.root")
    return one_square_side({size: Path(path).name for size, path in seen.items()}, f"the images in {folder}")


def pool_image_size(pool, where: str, count: int = 8) -> int:
    """The side of the square images of a RawDataset, from its first `count` samples, or a
    ConfigError naming data.img_size when they are not all one square size."""
    seen: dict[tuple[int, int], str] = {}
    for index in range(min(count, len(pool))):
        sample = pool[index]
        if not isinstance(sample, tuple):
            continue  # a BadSample: it tells no size
        seen.setdefault(sample[0].size, f"image {index}")
    if not seen:
        raise DataError(f"none of the first {min(count, len(pool))} images of {where} could be read; set data.img_size")
    return one_square_side(seen, f"the images of {where}")


def one_square_side(seen: dict[tuple[int, int], str], images: str) -> int:
    """The side of the one square (width, height) in `seen` (each size with an image that has it), or
    a ConfigError naming data.img_size when `images` are not all one square size."""
    if len(seen) == 1:
        (width, height), = seen
        if width == height:
            return width
    sizes = ", ".join(f"{w}x{h} ({name})" for (w, h), name in list(seen.items())[:4])
    raise ConfigError(f"data.img_size is not set and {images} are not all one square size "
                      f"(seen {sizes}); set data.img_size to the training resolution (images are resized to it)")
