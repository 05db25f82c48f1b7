"""Colour adjustments of a batch with one factor per sample, on images in [0, bound].

The same operations as torchvision's ColorJitter and RandomGrayscale (ITU-R 601 luma, blends
with black, the mean grey and the grey image, an HSV hue rotation), but with a factor per sample:
torchvision's functional ops take one float per call, and kornia's ColorJitter draws one order of
the four adjustments per batch, while the PIL path draws an order per sample.
"""

from __future__ import annotations

import torch

LUMA = (0.299, 0.587, 0.114)
_OFFSETS = torch.tensor([5.0, 3.0, 1.0]).view(1, 3, 1, 1)  # HSV -> RGB: channel c from (hue + offset) mod 6


def grey(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 1, H, W) luma."""
    r, g, b = images.unbind(1)
    return (r * LUMA[0]).add_(g, alpha=LUMA[1]).add_(b, alpha=LUMA[2]).unsqueeze(1)


def _per_sample(factor: torch.Tensor) -> torch.Tensor:
    return factor.to(torch.float32).view(-1, 1, 1, 1)


def _blend_(images: torch.Tensor, other: torch.Tensor, factor: torch.Tensor, bound: float) -> torch.Tensor:
    """factor * images + (1 - factor) * other, clipped to [0, bound], written into `images`."""
    return images.lerp_(other.expand_as(images), 1 - _per_sample(factor)).clamp_(0.0, bound)


def adjust_brightness_(images: torch.Tensor, factor: torch.Tensor, bound: float) -> torch.Tensor:
    return images.mul_(_per_sample(factor)).clamp_(0.0, bound)


def adjust_contrast_(images: torch.Tensor, factor: torch.Tensor, bound: float) -> torch.Tensor:
    luma = torch.tensor(LUMA, device=images.device)
    mean_grey = (images.mean(dim=(2, 3)) @ luma).view(-1, 1, 1, 1)  # = grey(images).mean(), one pass
    return _blend_(images, mean_grey, factor, bound)


def adjust_saturation_(images: torch.Tensor, factor: torch.Tensor, bound: float) -> torch.Tensor:
    return _blend_(images, grey(images), factor, bound)


def adjust_hue_(images: torch.Tensor, shift: torch.Tensor, bound: float = 1.0) -> torch.Tensor:
    return images.copy_(adjust_hue(images, shift))


def adjust_hue(images: torch.Tensor, shift: torch.Tensor, bound: float = 1.0) -> torch.Tensor:
    """Rotate the HSV hue by `shift` (B,) turns, keeping value and saturation (any `bound`)."""
    r, g, b = images.unbind(1)
    # elementwise max/min: 3x faster on CPU than amax/amin over the channel dimension
    top, bottom = torch.maximum(torch.maximum(r, g), b), torch.minimum(torch.minimum(r, g), b)
    chroma = top - bottom
    # hue in sextants [-1, 6), times the chroma: which channel is the largest decides the formula
    scaled = torch.where(top == r, g - b, torch.where(top == g, (b - r).add_(chroma, alpha=2),
                                                     (r - g).add_(chroma, alpha=4)))
    # + 6 keeps the rotated hue positive, so fmod is the modulo (cheaper than remainder)
    hue = scaled.div_(chroma.clamp(min=1e-12)).add_(6 * shift.to(torch.float32).view(-1, 1, 1) + 6)
    k = torch.fmod(hue.unsqueeze(1) + _OFFSETS.to(images.device), 6)  # r, g, b
    ramp = torch.minimum(k, 4 - k).clamp_(0, 1)
    return torch.addcmul(top.unsqueeze(1), chroma.unsqueeze(1), ramp, value=-1)


def to_grayscale(images: torch.Tensor) -> torch.Tensor:
    return grey(images).expand_as(images)


# in-place, in the order of torchvision's ColorJitter.get_params: brightness, contrast, saturation, hue
JITTER_OPS = (adjust_brightness_, adjust_contrast_, adjust_saturation_, adjust_hue_)
