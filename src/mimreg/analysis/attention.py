"""What the last block attends to: the cls token's attention over the patches, per head."""

from __future__ import annotations

import numpy as np
import torch

from mimreg.analysis._plotting import image_grid, save_png
from mimreg.analysis.inputs import Images
from mimreg.models import ViTEncoder


@torch.no_grad()
def last_block_attention(encoder: ViTEncoder, images: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T * scale) of the last block for unmasked images: (B, heads, 1 + L, 1 + L),
    query rows (cls first), each summing to 1.

    timm's Attention may run a fused kernel that never forms the matrix, so q and k are read from
    a forward hook on its `qkv` projection and the matrix is formed here, as timm's unfused path does.
    """
    attn = encoder.vit.blocks[-1].attn
    captured: list[torch.Tensor] = []
    handle = attn.qkv.register_forward_hook(lambda module, args, output: captured.append(output))
    try:
        encoder.forward_masked(images, None)
    finally:
        handle.remove()
    qkv = captured[-1]
    batch, tokens, _ = qkv.shape
    q, k, _ = qkv.reshape(batch, tokens, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    logits = (q * attn.scale) @ k.transpose(-2, -1)
    return logits.softmax(dim=-1)


def cls_attention(encoder: ViTEncoder, images: torch.Tensor) -> torch.Tensor:
    """The cls token's attention to each patch in the last block: (B, heads, grid, grid).
    A head's map sums to 1 minus the cls token's attention to itself."""
    weights = last_block_attention(encoder, images)[:, :, 0, 1:]
    g = encoder.grid_size
    return weights.reshape(*weights.shape[:2], g, g)


def heat_overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.7) -> np.ndarray:
    """(H, W, 3) image in [0, 1] under a (g, g) map stretched to its own [min, max] (attention of
    a trained ViT is often near-uniform; a stretched map still shows where it peaks) and enlarged
    to (H, W) in blocks, so the patch each value belongs to stays visible."""
    from matplotlib import colormaps

    scale = image.shape[0] // heat.shape[0]
    low, high = float(heat.min()), float(heat.max())
    level = np.kron((heat - low) / (high - low) if high > low else np.zeros_like(heat), np.ones((scale, scale)))
    colour = colormaps["inferno"](level)[..., :3]
    grey = image.mean(axis=-1, keepdims=True).repeat(3, axis=-1)
    return (1 - alpha) * grey + alpha * colour


def plot_attention(encoder: ViTEncoder, images: Images, path, title: str | None = None):
    """PNG: per image (column), the image, then the cls attention of the last block averaged
    over heads and for each head, over the image (each map stretched to its own min..max)."""
    maps = cls_attention(encoder, images.images).float().cpu().numpy()
    pixels = images.pixels()
    heads = maps.shape[1]
    rows = [list(pixels), [heat_overlay(x, m.mean(axis=0)) for x, m in zip(pixels, maps)]]
    rows += [[heat_overlay(x, m[h]) for x, m in zip(pixels, maps)] for h in range(heads)]
    labels = ["image", "mean of heads"] + [f"head {h + 1}" for h in range(heads)]
    return save_png(image_grid(rows, labels, title=title), path)
