"""Random token masking as in MAE: argsort of uniform noise, keep the smallest."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Mask:
    """Which patch tokens each image keeps.

    keep_ids: (B, N_vis) indices of visible patches, in the order they are fed to the encoder.
    restore_ids: (B, L) inverse permutation, to put decoder tokens back in image order.
    removed: (B, L) float, 1 for masked patches, 0 for visible ones (MAE's `mask`).
    """

    keep_ids: torch.Tensor
    restore_ids: torch.Tensor
    removed: torch.Tensor


def num_visible(num_patches: int, mask_ratio: float) -> int:
    return int(num_patches * (1 - mask_ratio))


def random_mask(noise: torch.Tensor, mask_ratio: float) -> Mask:
    """noise (B, L) uniform in [0, 1) -> Mask keeping the N_vis patches with the smallest noise."""
    batch, length = noise.shape
    keep = num_visible(length, mask_ratio)
    if keep < 1:
        raise ValueError(f"mask_ratio {mask_ratio} leaves no visible patch out of {length}")
    shuffle = torch.argsort(noise, dim=1)
    restore = torch.argsort(shuffle, dim=1)
    removed = torch.ones(batch, length, device=noise.device)
    removed[:, :keep] = 0
    removed = torch.gather(removed, 1, restore)
    return Mask(keep_ids=shuffle[:, :keep], restore_ids=restore, removed=removed)


def mask_noise(batch: int, length: int, device: torch.device | str,
               generator: torch.Generator | None = None) -> torch.Tensor:
    return torch.rand(batch, length, device=device, generator=generator)


def take_tokens(tokens: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """tokens (B, L, D), ids (B, K) -> (B, K, D)."""
    return torch.gather(tokens, 1, ids.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


def orthogonal_masks(noise: torch.Tensor, num_masks: int, mask_ratio: float) -> list[Mask]:
    """MI-MAE (Huang et al., ICLR 2025) §4.2: K masks whose visible sets are disjoint, from one
    permutation per image split into K chunks of N_vis patches (they cover every patch when
    K * N_vis = L). noise (B, L) -> K Masks."""
    batch, length = noise.shape
    keep = num_visible(length, mask_ratio)
    if num_masks * keep > length:
        raise ValueError(f"{num_masks} disjoint masks of {keep} visible patches need {num_masks * keep} "
                         f"patches, the image has {length}; lower num_masks or raise mask_ratio")
    shuffle = torch.argsort(noise, dim=1)
    masks = []
    for k in range(num_masks):
        # rotate the permutation so that chunk k comes first, then reuse random_mask's bookkeeping
        order = torch.roll(shuffle, shifts=-k * keep, dims=1)
        rank = torch.argsort(order, dim=1).to(noise.dtype)  # position of each patch in `order`
        masks.append(random_mask(rank / length, mask_ratio))
    return masks
