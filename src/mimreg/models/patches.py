"""Images <-> sequences of flattened patches, channel last as in MAE."""

from __future__ import annotations

import torch


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, 3, H, W) -> (B, (H/p)*(W/p), p*p*3)."""
    b, c, h, w = images.shape
    p = patch_size
    x = images.reshape(b, c, h // p, p, w // p, p)
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(patches: torch.Tensor, patch_size: int, channels: int = 3) -> torch.Tensor:
    """(B, L, p*p*C) -> (B, C, H, W) for a square grid."""
    b, length, _ = patches.shape
    p = patch_size
    g = int(round(length**0.5))
    x = patches.reshape(b, g, g, p, p, channels)
    x = torch.einsum("nhwpqc->nchpwq", x)
    return x.reshape(b, channels, g * p, g * p)
