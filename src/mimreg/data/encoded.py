"""Image files read as bytes in loader workers and decoded on the training device.

For folders too large to decode once (the device pipeline), `data.decode_on_device` moves the
decoding to the training device instead: workers only read files, `torchvision.io.decode_jpeg`
decodes a batch of JPEGs on the GPU (other formats decode on the CPU), and the views are built there
by the batched augmentation.
"""

from __future__ import annotations


import torch
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_image, decode_jpeg

from mimreg.data.base import BadSample
from mimreg.errors import DataError

JPEG_MAGIC = b"\xff\xd8"


class EncodedFiles(Dataset):
    """(index, file bytes as a uint8 tensor) per sample."""

    def __init__(self, paths: list[str]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor]:
        with open(self.paths[index], "rb") as f:
            return index, torch.frombuffer(bytearray(f.read()), dtype=torch.uint8)


def collate_encoded(samples) -> list[tuple[int, torch.Tensor]]:
    return list(samples)


def decode_on(device: torch.device, encoded: list[torch.Tensor], paths: list[str],
              skip_bad_images: bool) -> list[torch.Tensor | BadSample]:
    """(3, h, w) uint8 images on `device`; a BadSample for a file that would not decode when
    `skip_bad_images`, else a DataError naming it."""
    out: list[torch.Tensor | BadSample | None] = [None] * len(encoded)
    jpegs = [i for i, data in enumerate(encoded) if bytes(data[:2].tolist()) == JPEG_MAGIC]
    try:
        decoded = decode_jpeg([encoded[i] for i in jpegs], mode=ImageReadMode.RGB, device=device) if jpegs else []
        for i, image in zip(jpegs, decoded):
            out[i] = image
    except RuntimeError:  # one bad file fails the whole batch: decode them one by one
        pass
    for i in range(len(encoded)):
        if out[i] is None:
            out[i] = _decode_one(encoded[i], paths[i], device, skip_bad_images)
    return out


def _decode_one(data: torch.Tensor, path: str, device: torch.device, skip_bad_images: bool):
    try:
        if bytes(data[:2].tolist()) == JPEG_MAGIC:
            return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
        return decode_image(data, mode=ImageReadMode.RGB).to(device)
    except RuntimeError as exc:
        if skip_bad_images:
            return BadSample(path)
        raise DataError(f"Image file {path} could not be decoded ({exc}). Delete or replace the file, or set "
                        "data.skip_bad_images: true to skip it.") from exc
