"""A view's steps after its crop on a (3, H, W) uint8 tensor: flip and colour, then to float and normalised at once.

The steps, parameters and probabilities of `view_transform`'s PIL pipeline, as torchvision.transforms.v2's
RandomHorizontalFlip, RandomApply(ColorJitter), RandomGrayscale and RandomApply(GaussianBlur), which draw
the same numbers from torch's generator in the same order as the PIL transforms, so a view on the same
seed gets the same draws. The values differ where the two round differently, in grey levels of 255
(measured on 224-px photos, bounded by tests/data/test_tensor_view.py): brightness and blur agree
(blur within 1: both run torch's convolution, the PIL path on the image it converts);
contrast, saturation and grayscale are within 1 (torchvision truncates a luma of weights 0.2989, 0.587,
0.114, Pillow rounds one of 0.299, 0.587, 0.114 and rounds contrast's mean grey to an integer); hue is
within 11, mean under 2: Pillow shifts an 8-bit HSV image by the shift truncated to whole 1/255 turns,
here it is rotated in float (mimreg.data.colour's kernel, the device path's: torchvision's on uint8 is
slower than Pillow's) and rounded, within 0.5 of the exact rotation.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from mimreg.data.colour import adjust_hue
from mimreg.data.transforms import ViewSpec

PIXEL_MAX = 255.0


def rotate_hue(image: torch.Tensor, shift: float) -> torch.Tensor:
    """uint8 (3, H, W) with its HSV hue rotated by `shift` turns, in float, rounded (1.7 ms at 224 px
    against torchvision's 4.4 and Pillow's 3.6 on one core)."""
    rotated = adjust_hue(image[None].float(), torch.tensor([shift]))[0]
    return rotated.round_().clamp_(0, PIXEL_MAX).to(torch.uint8)


class ColorJitterUint8(v2.ColorJitter):
    """v2.ColorJitter, the same draws and order of the four ops, with the hue rotated by `rotate_hue`."""

    KERNELS = ((F.adjust_brightness, "brightness_factor"), (F.adjust_contrast, "contrast_factor"),
               (F.adjust_saturation, "saturation_factor"), (rotate_hue, "hue_factor"))

    def transform(self, inpt: torch.Tensor, params: dict) -> torch.Tensor:
        for op in params["fn_idx"].tolist():
            kernel, factor = self.KERNELS[op]
            if params[factor] is not None:
                inpt = kernel(inpt, params[factor])
        return inpt


def uint8_steps(spec: ViewSpec) -> list[v2.Transform]:
    """The random steps of `spec` after its crop, as view_transform orders them, on uint8 tensors."""
    steps: list[v2.Transform] = []
    if spec.hflip:
        steps.append(v2.RandomHorizontalFlip())
    if spec.jitter is not None:
        steps.append(v2.RandomApply([ColorJitterUint8(*spec.jitter)], p=spec.jitter_p))
    if spec.grayscale_p > 0:
        steps.append(v2.RandomGrayscale(p=spec.grayscale_p))
    if spec.blur_kernel:
        steps.append(v2.RandomApply([v2.GaussianBlur(spec.blur_kernel, sigma=spec.blur_sigma)], p=spec.blur_p))
    return steps


class TensorView:
    """uint8 crop (3, H, W) -> the view's float tensor: `spec`'s steps after the crop, then
    (x / 255 - mean) / std in one multiply-add (ToTensor and Normalize, within float rounding)."""

    def __init__(self, spec: ViewSpec, mean: Sequence[float], std: Sequence[float]):
        steps = uint8_steps(spec)
        self.steps = v2.Compose(steps) if steps else v2.Identity()  # Compose refuses an empty list
        self.scale = torch.tensor([1 / (PIXEL_MAX * s) for s in std]).view(3, 1, 1)
        self.shift = torch.tensor([-m / s for m, s in zip(mean, std)]).view(3, 1, 1)

    def __call__(self, crop: torch.Tensor) -> torch.Tensor:
        # float() then in place: half the time of addcmul on the uint8 tensor (type promotion)
        return self.steps(crop).float().mul_(self.scale).add_(self.shift)
