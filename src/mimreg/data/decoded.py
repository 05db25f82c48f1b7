"""A pretraining pool decoded once into one uint8 tensor (N, 3, H, W), for the device pipeline.

Array datasets (CIFAR, STL-10, digits, synthetic) are rearranged from their arrays. Image files
are decoded once and cached in a folder, keyed by dataset, split and the list of files; the cache
records each file's size and modification time and is rebuilt when any of them changes. It is
written to a temporary file and renamed, so an interrupted write never leaves a bad cache.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from mimreg.data.arrays import ArrayDataset
from mimreg.data.base import BadSample, ConcatRawDataset, RawDataset, SubsetDataset
from mimreg.data.files import ImageFileDataset, sample_paths
from mimreg.data.hf import HFImageDataset
from mimreg.data.shards import ShardDataset
from mimreg.errors import DataError
from mimreg.io import WriteError, atomic_write

CACHE_VERSION = 1
_TO_CHW = {"HWC": (0, 3, 1, 2), "CHW": None, "CWH": (0, 1, 3, 2)}


class MixedSizesError(DataError):
    """The images do not share one size, so they cannot be one tensor."""


@dataclass
class DecodedImages:
    pixels: torch.Tensor  # (N, 3, H, W) uint8
    bad_files: dict[int, str]  # index -> path of the images that would not decode (skip_bad_images)


def decoded_nbytes(raw: RawDataset) -> int | None:
    """The size of `raw` as one uint8 (N, 3, H, W) tensor, from its arrays, its first file's header
    or its first decoded image (Hugging Face datasets, tar shards); None when it cannot be told."""
    shape = _image_shape(raw)
    return None if shape is None else len(raw) * 3 * shape[0] * shape[1]


def _image_shape(raw: RawDataset) -> tuple[int, int] | None:
    if isinstance(raw, SubsetDataset):
        return _image_shape(raw.parent)
    if isinstance(raw, ConcatRawDataset):
        shapes = {_image_shape(p) for p in raw.parts}
        return shapes.pop() if len(shapes) == 1 else None
    if isinstance(raw, ArrayDataset):
        per_image = tuple(getattr(raw.images, "image_shape", None) or raw.images.shape[1:])
        height, width = {"HWC": (0, 1), "CHW": (1, 2), "CWH": (2, 1)}[raw.layout]
        return per_image[height], per_image[width]
    if isinstance(raw, (HFImageDataset, ShardDataset)) and len(raw):  # no header to read apart: decode one
        sample = raw[0]
        return None if isinstance(sample, BadSample) else (sample[0].height, sample[0].width)
    if isinstance(raw, ImageFileDataset) and len(raw):
        try:
            with Image.open(os.fsdecode(raw.paths[0])) as image:
                return image.height, image.width
        except Exception:  # an undecodable first file: let the decode pass report it
            return None
    return None


def decode_images(raw: RawDataset, cache_dir: Path | None, key: str, num_workers: int = 0) -> DecodedImages:
    """`raw` as one tensor; image files are cached under `cache_dir` as `<key>-<files digest>.pt`."""
    arrays = _from_arrays(raw)
    if arrays is not None:
        return DecodedImages(arrays, {})
    paths = sample_paths(raw)
    if paths is None or cache_dir is None:
        return _decode_each(raw, num_workers)
    cache = Path(cache_dir) / f"{key}-{hashlib.sha256(chr(0).join(paths).encode()).hexdigest()[:16]}.pt"
    source = _source_fingerprint(paths)
    if cache.is_file():
        stored = torch.load(cache, map_location="cpu", weights_only=True, mmap=True)
        if stored.get("version") == CACHE_VERSION and stored.get("source") == source:
            return DecodedImages(stored["pixels"], {int(i): p for i, p in stored["bad_files"].items()})
    decoded = _decode_each(raw, num_workers)
    _write_atomically(cache, {"version": CACHE_VERSION, "source": source, "pixels": decoded.pixels,
                              "bad_files": {str(i): p for i, p in decoded.bad_files.items()}})
    return decoded


def _from_arrays(raw: RawDataset) -> torch.Tensor | None:
    """The pixels of an array dataset (or a subset or concatenation of them), None otherwise."""
    if isinstance(raw, ConcatRawDataset):
        parts = [_from_arrays(p) for p in raw.parts]
        if any(p is None for p in parts):
            return None
        if len({p.shape[1:] for p in parts}) > 1:
            raise MixedSizesError(f"the parts of this dataset hold images of sizes {[p.shape[2:] for p in parts]}")
        return torch.cat(parts)
    indices = None
    if isinstance(raw, SubsetDataset):
        raw, indices = raw.parent, raw.indices
    if not isinstance(raw, ArrayDataset):
        return None
    images = np.asarray(raw.images[indices] if indices is not None else raw.images[:])
    order = _TO_CHW[raw.layout]
    pixels = torch.from_numpy(np.ascontiguousarray(images.transpose(order) if order else images))
    if pixels.shape[1] == 1:
        pixels = pixels.expand(-1, 3, -1, -1)
    return pixels.contiguous()


def _source_fingerprint(paths: list[str]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        stat = os.stat(path)
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _decode_each(raw: RawDataset, num_workers: int) -> DecodedImages:
    """Decode every sample (in `num_workers` processes), checking that all share one size."""
    pixels, bad_files, first = None, {}, None
    loader = DataLoader(raw, batch_size=256, num_workers=num_workers, collate_fn=_as_arrays)
    offset = 0
    for batch in loader:
        for i, item in enumerate(batch, start=offset):
            if isinstance(item, BadSample):
                bad_files[i] = item.path
                continue
            if pixels is None:
                first = (i, item.shape)
                pixels = torch.zeros(len(raw), 3, item.shape[0], item.shape[1], dtype=torch.uint8)
            if item.shape != first[1]:
                raise MixedSizesError(
                    f"image {i} of the pretraining images is {item.shape[1]}x{item.shape[0]} but image "
                    f"{first[0]} is {first[1][1]}x{first[1][0]}: the device pipeline needs images of one size; "
                    "set data.pipeline: loader (or resize the files to one size)")
            pixels[i] = torch.from_numpy(item).permute(2, 0, 1)
        offset += len(batch)
    if pixels is None:
        raise DataError(f"none of the {len(raw)} pretraining images could be decoded ({list(bad_files.values())[:3]} ...)")
    return DecodedImages(pixels, bad_files)


def _as_arrays(samples) -> list:
    return [s if isinstance(s, BadSample) else np.array(s[0], dtype=np.uint8) for s in samples]


def _write_atomically(path: Path, payload: dict) -> None:
    try:
        atomic_write(path, lambda handle: torch.save(payload, handle))
    except WriteError as exc:  # the cache is a choice of ours: say which setting moves it
        raise DataError(f"{exc}; or set data.cache_dir to a folder with room that you can write to") from exc
