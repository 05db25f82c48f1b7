"""The views of a ViewSpec built for a whole batch at once, on the device that holds the images.

Every random number of sample i in epoch e comes from `keyed_uniforms(seed, e, i, view, slot)`,
and each parameter is drawn as torchvision draws it for the PIL path (RandomResizedCrop's ten
attempts and centre-crop fallback, flip, RandomApply'd ColorJitter with its per-sample order,
RandomGrayscale, GaussianBlur's sigma), so the distributions are the PIL path's. The crop is
resampled with Pillow's bicubic filter (results within one grey level of Pillow's); the colour
steps run in float without Pillow's rounding to 8 bits after each step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from mimreg.data.colour import JITTER_OPS, to_grayscale
from mimreg.data.keyed_random import keyed_uniforms
from mimreg.data.normalise import PIXEL_MAX, Normalise
from mimreg.data.resample import apply_separable, crop_resize_matrix, gaussian_blur_matrix
from mimreg.data.transforms import ViewSpec

CROP_ATTEMPTS = 10  # as torchvision's RandomResizedCrop.get_params
# slots of one view's uniforms (fixed, so a stream stays the same when parameters are added)
_SCALE, _RATIO = slice(0, 10), slice(10, 20)
_TOP, _LEFT, _FLIP, _JITTER, _FACTORS, _ORDER, _GREY, _BLUR, _SIGMA = 20, 21, 22, 23, slice(24, 28), slice(28, 32), 32, 33, 34
_SLOTS = 35


@dataclass
class ViewParams:
    """Per-sample parameters of one view of B samples (numpy arrays of length B)."""

    top: np.ndarray
    left: np.ndarray
    height: np.ndarray
    width: np.ndarray
    flip: np.ndarray
    jitter: np.ndarray
    factors: np.ndarray  # (B, 4): brightness, contrast, saturation, hue
    order: np.ndarray  # (B, 4): the jitter ops in the order they are applied
    grayscale: np.ndarray
    blur: np.ndarray
    sigma: np.ndarray


def draw_params(spec: ViewSpec, seed: int, epoch: int, indices, view: int, heights, widths) -> ViewParams:
    """The parameters of view `view` of samples `indices` whose images are heights x widths."""
    u = keyed_uniforms(seed, epoch, indices, view, _SLOTS)
    height, width = np.broadcast_to(heights, len(u)), np.broadcast_to(widths, len(u))
    top, left, h, w = _crop_boxes(spec, u, height, width)
    factors, used = _jitter_factors(spec, u[:, _FACTORS])
    return ViewParams(
        top=top, left=left, height=h, width=w,
        flip=spec.hflip & (u[:, _FLIP] < 0.5),
        jitter=used & (u[:, _JITTER] < spec.jitter_p),
        factors=factors, order=np.argsort(u[:, _ORDER], axis=1, kind="stable"),
        grayscale=u[:, _GREY] < spec.grayscale_p,
        blur=(spec.blur_kernel > 0) & (u[:, _BLUR] < spec.blur_p),
        sigma=spec.blur_sigma[0] + (spec.blur_sigma[1] - spec.blur_sigma[0]) * u[:, _SIGMA],
    )


def _crop_boxes(spec: ViewSpec, u: np.ndarray, height: np.ndarray, width: np.ndarray):
    """RandomResizedCrop.get_params for every sample: the first of ten (area, ratio) attempts that
    fits, else the largest centre crop within the ratio range."""
    area = (height * width).astype(np.float64)[:, None]
    target = area * (spec.crop_scale[0] + (spec.crop_scale[1] - spec.crop_scale[0]) * u[:, _SCALE])
    low, high = np.log(spec.crop_ratio[0]), np.log(spec.crop_ratio[1])
    aspect = np.exp(low + (high - low) * u[:, _RATIO])
    w = np.rint(np.sqrt(target * aspect)).astype(np.int64)  # rint rounds half to even, as round()
    h = np.rint(np.sqrt(target / aspect)).astype(np.int64)
    fits = (w > 0) & (w <= width[:, None]) & (h > 0) & (h <= height[:, None])
    first = fits.argmax(axis=1)
    rows = np.arange(len(u))
    w, h = w[rows, first], h[rows, first]
    fallback = ~fits.any(axis=1)
    if fallback.any():
        cw, ch = _centre_crop(spec, height[fallback], width[fallback])
        w[fallback], h[fallback] = cw, ch
    top = np.floor(u[:, _TOP] * (height - h + 1)).astype(np.int64)
    left = np.floor(u[:, _LEFT] * (width - w + 1)).astype(np.int64)
    top[fallback], left[fallback] = (height[fallback] - h[fallback]) // 2, (width[fallback] - w[fallback]) // 2
    return top, left, h, w


def _centre_crop(spec: ViewSpec, height: np.ndarray, width: np.ndarray):
    ratio = width / height
    lo, hi = min(spec.crop_ratio), max(spec.crop_ratio)
    w = np.where(ratio < lo, width, np.where(ratio > hi, np.rint(height * hi), width)).astype(np.int64)
    h = np.where(ratio < lo, np.rint(width / lo), height).astype(np.int64)
    return w, h


def _jitter_factors(spec: ViewSpec, u: np.ndarray) -> tuple[np.ndarray, bool]:
    """ColorJitter's factors: uniform in [max(0, 1 - s), 1 + s] (hue: [-s, s]); s 0 leaves an op out."""
    if spec.jitter is None:
        return np.zeros_like(u), False
    strength = np.asarray(spec.jitter, dtype=np.float64)
    low = np.concatenate([np.maximum(0.0, 1 - strength[:3]), -strength[3:]])
    high = np.concatenate([1 + strength[:3], strength[3:]])
    return low + (high - low) * u, True


class BatchAugment:
    """`views(images, indices, epoch)`: the augmented, normalised views of a batch of uint8 images.

    `images` is (B, 3, H, W) uint8 or a list of B (3, h, w) uint8 tensors of any sizes; `indices`
    are the samples' dataset indices, which with the epoch fix every random draw.
    """

    def __init__(self, specs: Sequence[ViewSpec], mean: Sequence[float], std: Sequence[float], seed: int):
        self.specs, self.seed = list(specs), int(seed)
        self.normalise = Normalise(mean, std)  # in place on the float views built here
        self.groups: dict[ViewSpec, list[int]] = {}
        for view, spec in enumerate(self.specs):  # views of one spec are augmented as one batch
            self.groups.setdefault(spec, []).append(view)

    def views(self, images: torch.Tensor | list[torch.Tensor], indices, epoch: int) -> list[torch.Tensor]:
        indices = np.asarray(indices, dtype=np.int64)
        heights, widths = _sizes(images)
        out: list[torch.Tensor | None] = [None] * len(self.specs)
        for spec, views in self.groups.items():
            params = [draw_params(spec, self.seed, epoch, indices, v, heights, widths) for v in views]
            batch = _concat_params(params)
            pixels = crop_and_flip(images, batch, spec.size, repeats=len(views))
            pixels = colour(pixels, batch, spec)
            for v, chunk in zip(views, self.normalise(pixels).chunk(len(views))):
                out[v] = chunk
        return out


def _sizes(images) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(images, torch.Tensor):
        return np.full(len(images), images.shape[2]), np.full(len(images), images.shape[3])
    return np.array([im.shape[1] for im in images]), np.array([im.shape[2] for im in images])


def _concat_params(params: list[ViewParams]) -> ViewParams:
    if len(params) == 1:
        return params[0]
    fields = ViewParams.__dataclass_fields__
    return ViewParams(**{name: np.concatenate([getattr(p, name) for p in params]) for name in fields})


def _on(device, array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array)).to(device)


def crop_and_flip(images, params: ViewParams, size: int, repeats: int = 1) -> torch.Tensor:
    """Float (repeats * B, 3, size, size) in [0, 255]: the crops resized, flipped where drawn."""
    device = images.device if isinstance(images, torch.Tensor) else images[0].device
    if not isinstance(images, torch.Tensor):  # images of several sizes: one product each
        count = len(images)
        return torch.cat([_crop_one(images[i % count], params, i, size) for i in range(repeats * count)])
    in_h, in_w = images.shape[2], images.shape[3]
    rows = crop_resize_matrix(_on(device, params.top), _on(device, params.height), in_h, size)
    columns = crop_resize_matrix(_on(device, params.left), _on(device, params.width), in_w, size,
                                 flip=_on(device, params.flip))
    # Pillow (13) runs the vertical pass first when it shrinks the crop by more than twice what the
    # horizontal pass shrinks it (measured on 3,380 shapes; with 8-bit passes the order shows)
    shrink_rows, shrink_columns = params.height - size, params.width - size
    rows_first = _on(device, (shrink_rows > 0) & (shrink_rows > 2 * shrink_columns))
    pixels = images.float()
    if repeats > 1:
        pixels = pixels.repeat(repeats, 1, 1, 1)
    return apply_separable(pixels, rows, columns, rows_first, clamp=PIXEL_MAX)


def _crop_one(image: torch.Tensor, params: ViewParams, i: int, size: int) -> torch.Tensor:
    one = ViewParams(**{name: getattr(params, name)[i:i + 1] for name in ViewParams.__dataclass_fields__})
    return crop_and_flip(image[None], one, size)


def colour(pixels: torch.Tensor, params: ViewParams, spec: ViewSpec) -> torch.Tensor:
    """Colour jitter (its four ops in each sample's order), grayscale and blur, where drawn."""
    device = pixels.device
    if params.jitter.any():
        pixels = _jitter(pixels, params, spec)
    if params.grayscale.any():
        at = _on(device, np.flatnonzero(params.grayscale))
        pixels.index_copy_(0, at, to_grayscale(pixels.index_select(0, at)))
    if params.blur.any():
        chosen = np.flatnonzero(params.blur)
        at = _on(device, chosen)
        matrix = gaussian_blur_matrix(_on(device, params.sigma[chosen]), spec.blur_kernel, spec.size)
        pixels.index_copy_(0, at, apply_separable(pixels.index_select(0, at), matrix, matrix))
    return pixels


def _jitter(pixels: torch.Tensor, params: ViewParams, spec: ViewSpec) -> torch.Tensor:
    """Each jittered sample's four colour ops in its own order. Before each of the four rounds the
    batch is sorted by the op the sample does in that round, so each op runs in place on one
    contiguous slice (gathering a subset per op and round costs 3x more at 32 px). index_select
    into a kept buffer, not x[index] into a new one: 5x faster on CPU."""
    device = pixels.device
    rows = np.arange(len(params.jitter))  # the sample now in each row
    factors = _on(device, params.factors.astype(np.float32))
    spare = torch.empty_like(pixels)  # gathers alternate between two buffers: no fresh allocations
    for position in range(4):
        op_of_row = np.where(params.jitter[rows], params.order[rows, position], len(JITTER_OPS))
        regroup = np.argsort(op_of_row, kind="stable")
        rows, op_of_row = rows[regroup], op_of_row[regroup]
        pixels, spare = torch.index_select(pixels, 0, _on(device, regroup), out=spare), pixels
        bounds = np.searchsorted(op_of_row, np.arange(len(JITTER_OPS) + 1))
        for op, adjust in enumerate(JITTER_OPS):
            start, stop = int(bounds[op]), int(bounds[op + 1])
            if stop > start and spec.jitter[op] > 0:
                adjust(pixels[start:stop], factors[_on(device, rows[start:stop]), op], PIXEL_MAX)
    return torch.index_select(pixels, 0, _on(device, np.argsort(rows)), out=spare)
