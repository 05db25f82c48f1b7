"""Random resized crops straight from image files, JPEGs decoded at reduced scale when the crop allows.

libjpeg can decode a JPEG at 1/2, 1/4 or 1/8 of its size (DCT scaling, Pillow's `Image.draft`),
which skips most of the inverse DCT and colour conversion. A crop that is resized down to the
output anyway loses nothing it would keep when it is decoded at the largest such reduction that
still leaves it at least the output size. Crops no reduction serves are decoded by torchvision's
`decode_jpeg` and resized by torch's antialiased bicubic filter on uint8 (Pillow's filter, three
times faster; benchmarks/imagenet_decode.py has the numbers). The file is read once (the size comes
from its frame header, data/jpeg_frame.py) and the views leave the worker as uint8 tensors: the
float conversion and normalisation run batched on the training device (normalise.Normalise).

Every parameter (crop box, flip, colour) is the device pipeline's draw for the same (seed, epoch,
index, view) (batch_augment.draw_params, for a whole loader batch in one call): a folder gives the
same views whether its images are decoded into memory (device pipeline) or cropped from the files
here, within the two pipelines' rounding. The boxes are drawn on the full-size image before decoding.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.v2 import functional as TF

from mimreg.data.base import BadSample, RawDataset
from mimreg.data.batch_augment import ViewParams, draw_params
from mimreg.data.files import sample_paths, to_rgb, undecodable
from mimreg.data.jpeg_frame import jpeg_frame
from mimreg.data.seeded import TransformedDataset
from mimreg.data.tensor_view import view_steps_uint8
from mimreg.data.transforms import ViewSpec

REDUCTIONS = (8, 4, 2)  # the scales libjpeg decodes at, largest first

Box = tuple[int, int, int, int]  # top, left, height, width, as RandomResizedCrop.get_params gives


def draft_reduction(box: Box, out_size: int) -> int:
    """The largest of 8, 4, 2 that leaves the crop `box` at least `out_size` on both sides, else 1."""
    _, _, height, width = box
    return next((r for r in REDUCTIONS if min(height, width) / r >= out_size), 1)


@dataclass
class ImageHead:
    """An image file's bytes and its full (width, height); `image` is the file opened by Pillow (header
    read, nothing decoded), None for a colour JPEG, whose frame header gave the size."""

    data: bytes
    size: tuple[int, int]
    image: Image.Image | None


def read_head(data: bytes) -> ImageHead:
    frame = jpeg_frame(data)
    if frame is not None and frame.components == 3:
        return ImageHead(data, (frame.width, frame.height), None)
    image = Image.open(io.BytesIO(data))
    return ImageHead(data, image.size, image)


def decode_for_crops(head: ImageHead, boxes: Sequence[Box], sizes: Sequence[int]) -> tuple[torch.Tensor | Image.Image, float]:
    """The file of `head` decoded for the crops `boxes` (full-size pixels), resized to `sizes`, and its
    scale (decoded size / full size): a JPEG at the reduction every box allows as a Pillow image (draft
    mode), a colour JPEG that allows none as a (3, h, w) uint8 tensor by torchvision's decoder (faster
    than Pillow's), any other file by Pillow, as a tensor."""
    if head.image is not None and head.image.format != "JPEG":
        return pil_to_tensor(to_rgb(head.image)), 1.0
    reduction = min(draft_reduction(box, size) for box, size in zip(boxes, sizes))
    if reduction == 1 and head.image is None:
        return decode_jpeg(torch.frombuffer(bytearray(head.data), dtype=torch.uint8), mode=ImageReadMode.RGB), 1.0
    image = head.image if head.image is not None else Image.open(io.BytesIO(head.data))
    if reduction == 1:
        return pil_to_tensor(image.convert("RGB")), 1.0
    # pixel k of the reduced image covers full-size pixels [k r, (k + 1) r): the scale is
    # exactly 1 / r (draft's box says which r libjpeg took), not the ratio of the rounded sizes
    full_width = image.size[0]  # draft changes the size it reports
    drafted = image.draft("RGB", (image.size[0] // reduction, image.size[1] // reduction))
    scale = drafted[1][2] / full_width if drafted is not None else 1.0
    return image.convert("RGB"), scale


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)


def resized_crop(image: torch.Tensor | Image.Image, box: Box, scale: float, out_size: int) -> torch.Tensor:
    """The crop `box` (full-size pixels) of `image` (at `scale` of full size) resized to `out_size`,
    bicubic, as a (3, out_size, out_size) uint8 tensor: a full-size tensor by torch's antialiased
    filter on uint8 (Pillow's, within 0.1 grey level, 3x faster); a reduced Pillow image by Pillow's,
    which maps the fractional box exactly."""
    top, left, height, width = box
    if isinstance(image, Image.Image):
        region = (left * scale, top * scale, (left + width) * scale, (top + height) * scale)
        return pil_to_tensor(image.resize((out_size, out_size), Image.BICUBIC, box=region))
    return TF.resized_crop(image, top, left, height, width, [out_size, out_size],
                           interpolation=TF.InterpolationMode.BICUBIC, antialias=True)


class DraftCropDataset(TransformedDataset):
    """The views of `specs` of an image-file dataset as uint8 tensors, each a random resized crop
    (decoded at reduced scale when it allows) followed by the rest of its view's steps on uint8, with
    the device pipeline's draws for (seed, epoch, index, view). A list of views when `as_list`, else
    the one view. Float conversion and normalisation follow on the training device (normalise.Normalise).
    """

    def __init__(self, raw: RawDataset, specs: Sequence[ViewSpec], seed: int, as_list: bool, skip_bad_images: bool):
        super().__init__(raw, transform=None, seed=seed)
        paths = sample_paths(raw)
        if paths is None:
            raise ValueError("DraftCropDataset needs a dataset of image files")
        self.paths, self.specs, self.as_list, self.skip_bad_images = paths, list(specs), as_list, skip_bad_images

    def __getitem__(self, index: int) -> tuple[torch.Tensor | list[torch.Tensor], int] | BadSample:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list:
        """The samples of `indices` (the DataLoader asks for a whole batch at once): every file's
        header first, then every view's parameters for the batch in one draw, then each sample."""
        heads = [self._read(int(i)) for i in indices]
        good = [k for k, head in enumerate(heads) if isinstance(head, ImageHead)]
        widths, heights = np.array([heads[k].size for k in good], dtype=np.int64).reshape(-1, 2).T
        chosen = [int(indices[k]) for k in good]
        params = [draw_params(spec, self.seed, self.epoch, chosen, view, heights, widths)
                  for view, spec in enumerate(self.specs)] if good else []
        samples = list(heads)  # BadSample where a header could not be read
        for row, k in enumerate(good):
            samples[k] = self._sample(chosen[row], heads[k], params, row)
        return samples

    def _read(self, index: int) -> ImageHead | BadSample:
        try:
            with open(self.paths[index], "rb") as file:
                return read_head(file.read())
        except Exception as exc:  # an unreadable header: see _unusable
            return self._unusable(index, exc)

    def _sample(self, index: int, head: ImageHead, params: list[ViewParams], row: int):
        boxes = [(int(p.top[row]), int(p.left[row]), int(p.height[row]), int(p.width[row])) for p in params]
        try:
            decoded, scale = decode_for_crops(head, boxes, [spec.size for spec in self.specs])
        except Exception as exc:
            return self._unusable(index, exc)
        views = [view_steps_uint8(resized_crop(decoded, box, scale, spec.size), spec, p, row)
                 for box, spec, p in zip(boxes, self.specs, params)]
        return (views if self.as_list else views[0]), int(self.labels[index])

    def _unusable(self, index: int, exc: Exception) -> BadSample:
        """Decoders raise many unrelated types; any of them means this one file is unusable."""
        if self.skip_bad_images:
            return BadSample(self.paths[index])
        raise undecodable(self.paths[index], exc) from exc
