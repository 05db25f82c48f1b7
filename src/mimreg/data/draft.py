"""Random resized crops straight from image files, JPEGs decoded at reduced scale when the crop allows.

libjpeg can decode a JPEG at 1/2, 1/4 or 1/8 of its size (DCT scaling, Pillow's `Image.draft`),
which skips most of the inverse DCT and colour conversion. A crop that is resized down to the
output anyway loses nothing it would keep when it is decoded at the largest such reduction that
still leaves it at least the output size. Crops no reduction serves are decoded by torchvision's
`decode_jpeg` and resized by torch's antialiased bicubic filter on uint8 (Pillow's filter, three
times faster; benchmarks/imagenet_decode.py has the numbers). The file is read once (the size comes
from its header) and the view stays a uint8 tensor after its crop until one fused to-float and
normalise (data/tensor_view.py). The crop box is drawn on the full-size image first, with
torchvision's draws, so the crops have the same distribution (and, for one view, the same boxes for
the same seed) as RandomResizedCrop on the fully decoded image.
"""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.v2 import functional as TF

from mimreg.data.base import BadSample, RawDataset
from mimreg.data.files import decode_rgb, sample_paths, undecodable
from mimreg.data.seeded import TransformedDataset, sample_seed, seeded_draws
from mimreg.data.tensor_view import TensorView
from mimreg.data.transforms import ViewSpec

REDUCTIONS = (8, 4, 2)  # the scales libjpeg decodes at, largest first

Box = tuple[int, int, int, int]  # top, left, height, width, as RandomResizedCrop.get_params gives


def draft_reduction(box: Box, out_size: int) -> int:
    """The largest of 8, 4, 2 that leaves the crop `box` at least `out_size` on both sides, else 1."""
    _, _, height, width = box
    return next((r for r in REDUCTIONS if min(height, width) / r >= out_size), 1)


def crop_boxes(size: tuple[int, int], specs: Sequence[ViewSpec]) -> list[Box]:
    """One RandomResizedCrop box per view, drawn on an image of `size` (width, height) with torch's RNG."""
    # get_params reads only the shape: a zero-stride tensor of it allocates nothing
    probe = torch.empty(1, 1, 1).expand(1, size[1], size[0])
    return [T.RandomResizedCrop.get_params(probe, list(s.crop_scale), list(s.crop_ratio)) for s in specs]


def decode_for_crops(data: bytes, image: Image.Image, boxes: list[Box],
                     specs: Sequence[ViewSpec]) -> tuple[torch.Tensor | Image.Image, float]:
    """The file `data`, opened (header only) as `image`, decoded for the crops `boxes`, and its scale
    (decoded size / full size): a JPEG at the reduction every view's box allows as a Pillow image
    (draft mode), an RGB JPEG that allows none as a (3, h, w) uint8 tensor by torchvision's decoder
    (faster than Pillow's), any other file by Pillow, as a tensor."""
    if image.format != "JPEG":
        return pil_to_tensor(decode_rgb(io.BytesIO(data))), 1.0
    reduction = min(draft_reduction(box, spec.size) for box, spec in zip(boxes, specs))
    if reduction == 1 and image.mode == "RGB":
        return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB), 1.0
    if reduction == 1:
        return pil_to_tensor(image.convert("RGB")), 1.0
    full_width = image.size[0]
    # pixel k of the reduced image covers full-size pixels [k r, (k + 1) r): the scale is
    # exactly 1 / r (draft's box says which r libjpeg took), not the ratio of the rounded sizes
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
    """The views of `specs` of an image-file dataset, each a random resized crop (decoded at
    reduced scale when it allows) followed by the rest of its view's steps on uint8; draws fixed per
    (seed, epoch, index) as TransformedDataset's. A list of views when `as_list`, else the one view.

    With several views all boxes are drawn before the other augmentations (one decode serves
    them all): the same distributions as the PIL path, not the same draws.
    """

    def __init__(self, raw: RawDataset, specs: Sequence[ViewSpec], mean, std, seed: int,
                 as_list: bool, skip_bad_images: bool):
        super().__init__(raw, transform=None, seed=seed)
        paths = sample_paths(raw)
        if paths is None:
            raise ValueError("DraftCropDataset needs a dataset of image files")
        self.paths, self.specs, self.as_list, self.skip_bad_images = paths, list(specs), as_list, skip_bad_images
        # each view's steps after its crop, on the uint8 crop: flip, colour, float, normalise
        self.rests = [TensorView(s, mean, std) for s in self.specs]

    def __getitem__(self, index: int) -> tuple[torch.Tensor | list[torch.Tensor], int] | BadSample:
        path = self.paths[index]
        with seeded_draws(sample_seed(self.seed, self.epoch, int(index))):
            try:
                with open(path, "rb") as file:
                    data = file.read()
                with Image.open(io.BytesIO(data)) as image:  # reads only the header, for the size
                    boxes = crop_boxes(image.size, self.specs)
                    decoded, scale = decode_for_crops(data, image, boxes, self.specs)
            # decoders raise many unrelated types; any of them means this one file is unusable
            except Exception as exc:
                if self.skip_bad_images:
                    return BadSample(path)
                raise undecodable(path, exc) from exc
            views = [rest(resized_crop(decoded, box, scale, spec.size))
                     for box, spec, rest in zip(boxes, self.specs, self.rests)]
        return (views if self.as_list else views[0]), int(self.labels[index])
