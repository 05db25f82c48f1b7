"""A view's steps after its crop on a (3, H, W) uint8 tensor (flip and colour) with drawn parameters;
the batched float conversion and normalisation follow on the training device (data/normalise.py).

The parameters are the device pipeline's (batch_augment.draw_params, keyed by seed, epoch, index and
view), applied as torchvision's functional ops on uint8, which round to 8 bits after each step as
the PIL pipeline does. Against Pillow's ops on the same parameters, in grey levels of 255 (measured
on 224-px photos, bounded by tests/data/test_tensor_view.py): brightness and blur agree (blur within
1: both run torch's convolution, the PIL path on the image it converts); contrast, saturation and
grayscale are within 1 (torchvision truncates a luma of weights 0.2989, 0.587, 0.114, Pillow rounds
one of 0.299, 0.587, 0.114 and rounds contrast's mean grey to an integer); hue is within 11, mean
under 2: Pillow shifts an 8-bit HSV image by the shift truncated to whole 1/255 turns, here it is
rotated in float (mimreg.data.colour's kernel, the device path's: torchvision's on uint8 is slower
than Pillow's) and rounded, within 0.5 of the exact rotation.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torchvision.transforms.v2 import functional as F

from mimreg.data.batch_augment import ViewParams
from mimreg.data.colour import adjust_hue
from mimreg.data.normalise import PIXEL_MAX
from mimreg.data.transforms import ViewSpec



def rotate_hue(image: torch.Tensor, shift: float) -> torch.Tensor:
    """uint8 (3, H, W) with its HSV hue rotated by `shift` turns, in float, rounded (1.7 ms at 224 px
    against torchvision's 4.4 and Pillow's 3.6 on one core)."""
    rotated = adjust_hue(image[None].float(), torch.tensor([shift]))[0]
    return rotated.round_().clamp_(0, PIXEL_MAX).to(torch.uint8)


JITTER_KERNELS = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, rotate_hue)  # ColorJitter's ops


def jitter_uint8(image: torch.Tensor, order: Sequence[int], factors: Sequence[float],
                 strengths: Sequence[float]) -> torch.Tensor:
    """ColorJitter on uint8 (3, H, W): op k of `order` (0 brightness, 1 contrast, 2 saturation, 3 hue)
    at factors[k]; an op of strength 0 is left out, as ColorJitter leaves it."""
    for op in order:
        if strengths[op] > 0:
            image = JITTER_KERNELS[op](image, float(factors[op]))
    return image


def view_steps_uint8(crop: torch.Tensor, spec: ViewSpec, params: ViewParams, i: int) -> torch.Tensor:
    """`spec`'s steps after its crop on the uint8 (3, H, W) `crop` with sample i's `params`, in
    view_transform's order: flip, colour jitter (its ops in the drawn order), grayscale, blur."""
    if params.flip[i]:
        crop = crop.flip(-1)
    if params.jitter[i]:
        crop = jitter_uint8(crop, params.order[i], params.factors[i], spec.jitter)
    if params.grayscale[i]:
        crop = F.rgb_to_grayscale(crop, num_output_channels=3)
    if params.blur[i]:
        crop = F.gaussian_blur(crop, [spec.blur_kernel] * 2, [float(params.sigma[i])] * 2)
    return crop
