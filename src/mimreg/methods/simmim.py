"""SimMIM (Xie et al., CVPR 2022): mask tokens in the encoder, a linear decoder, L1 on masked pixels."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from mimreg.bounds import bounded
from mimreg.errors import ConfigError
from mimreg.methods.base import Method, MethodOutput, Prediction, check_visible, pooled_block_indices, register
from mimreg.models import ViTEncoder, patchify, take_tokens
from mimreg.numerics import fp32_loss


def visible_blocks(blocks: int, mask_ratio: float) -> int:
    """Blocks left visible when ceil(ratio * blocks) of `blocks` are masked (SimMIM's count)."""
    return blocks - math.ceil(blocks * mask_ratio)


def block_mask(batch: int, grid: int, unit: int, mask_ratio: float, device=None,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """SimMIM's block-wise random masking: (B, grid*grid) float, 1 = masked; whole unit x unit
    blocks of patches are masked, ceil(ratio * blocks) of them per image."""
    if grid % unit:
        raise ConfigError(f"method.mask_unit {unit} must divide the {grid}x{grid} patch grid")
    blocks = (grid // unit) ** 2
    count = math.ceil(blocks * mask_ratio)
    noise = torch.rand(batch, blocks, device=device, generator=generator)
    chosen = torch.zeros(batch, blocks, device=device)
    chosen.scatter_(1, noise.argsort(dim=1)[:, :count], 1.0)
    side = grid // unit
    chosen = chosen.view(batch, side, 1, side, 1).expand(-1, -1, unit, -1, unit)
    return chosen.reshape(batch, grid * grid)


def orthogonal_block_masks(batch: int, grid: int, unit: int, mask_ratio: float, num_masks: int, device=None,
                           generator: torch.Generator | None = None) -> torch.Tensor:
    """K block masks per image whose visible blocks are disjoint (MI-SimMIM): one permutation of
    the blocks split into K visible sets. Returns (K*B, grid*grid), view-major, 1 = masked."""
    if grid % unit:
        raise ConfigError(f"method.mask_unit {unit} must divide the {grid}x{grid} patch grid")
    side = grid // unit
    blocks = side**2
    visible = visible_blocks(blocks, mask_ratio)
    if num_masks * visible > blocks:
        raise ConfigError(f"{num_masks} masks with {visible} visible blocks each need {num_masks * visible} "
                          f"blocks, there are {blocks}; lower num_masks or raise mask_ratio")
    order = torch.rand(batch, blocks, device=device, generator=generator).argsort(dim=1)
    views = []
    for k in range(num_masks):
        chosen = torch.ones(batch, blocks, device=device)
        chosen.scatter_(1, order[:, k * visible:(k + 1) * visible], 0.0)
        views.append(chosen.view(batch, side, 1, side, 1).expand(-1, -1, unit, -1, unit).reshape(batch, -1))
    return torch.cat(views)


@fp32_loss
def masked_l1_loss(pred: torch.Tensor, target: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    """SimMIM Eq. 1: mean absolute error over the pixels of masked patches only.
    pred, target (B, L, p*p*3); removed (B, L) with 1 for masked patches. fp32; scalar."""
    per_patch = (pred - target).abs().mean(dim=-1)
    removed = removed.to(pred.dtype)
    return (per_patch * removed).sum() / removed.sum().clamp_min(1.0)


@dataclass
class SimMIMOptions:
    mask_ratio: float = bounded(0.6, gt=0, lt=1)
    mask_unit: int = bounded(2, ge=1)  # masked blocks of mask_unit x mask_unit patches (SimMIM: 32 px at patch 16)
    num_masks: int = bounded(1, ge=1)  # K views per image with disjoint visible blocks (MI-SimMIM), view-major


@register
class SimMIM(Method):
    name = "simmim"
    paper = "SimMIM (Xie et al., CVPR 2022), Eq. 1"
    summary = "masked image modeling with mask tokens in the encoder and a linear pixel decoder (L1)"
    Options = SimMIMOptions

    def __init__(self, encoder: ViTEncoder, options: SimMIMOptions):
        super().__init__(encoder, options)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, encoder.embed_dim))
        nn.init.normal_(self.mask_token, std=0.02)
        self.decoder = nn.Linear(encoder.embed_dim, encoder.patch_size**2 * 3)

    def no_weight_decay(self) -> set[str]:
        return {"mask_token"}

    @classmethod
    def check_options(cls, options: SimMIMOptions, img_size: int, patch_size: int) -> None:
        grid, unit = img_size // patch_size, options.mask_unit
        if grid % unit:
            raise ConfigError(f"method.mask_unit={unit} must divide the {grid}x{grid} patch grid "
                              f"(data.img_size={img_size} / model.patch_size={patch_size})")
        blocks = (grid // unit) ** 2
        what = "patches" if unit == 1 else f"{unit}x{unit}-patch blocks"
        check_visible(options.mask_ratio, visible_blocks(blocks, options.mask_ratio), blocks, what, img_size,
                      patch_size, options.num_masks)

    def feature_names(self) -> set[str]:
        return super().feature_names() | {"visible_tokens", "visible_patch_embed"}

    def predict(self, images, *, needs=frozenset(), generator=None, removed=None) -> Prediction:
        """images (B, 3, H, W); `removed` (B, L) fixes the mask (else drawn from `generator`)."""
        enc, o = self.encoder, self.options
        if o.num_masks > 1:
            images = images.repeat(o.num_masks, 1, 1, 1)
            if removed is None:
                removed = orthogonal_block_masks(images.shape[0] // o.num_masks, enc.grid_size, o.mask_unit,
                                                 o.mask_ratio, o.num_masks, images.device, generator)
        elif removed is None:
            removed = block_mask(images.shape[0], enc.grid_size, o.mask_unit, o.mask_ratio, images.device, generator)
        tokens = enc.vit.patch_embed(images)
        tokens = torch.where(removed.unsqueeze(-1).bool(), self.mask_token.to(tokens.dtype), tokens)
        out = enc.forward_tokens(tokens + enc.vit.pos_embed[:, 1:], pooled_block_indices(needs))
        return Prediction(self.decoder(out.tokens), patchify(images, enc.patch_size), removed, False, out)

    def forward(self, images, *, needs=frozenset(), generator=None, removed=None) -> MethodOutput:
        """images (B, 3, H, W); `removed` (B, L) fixes the mask (else drawn from `generator`)."""
        p = self.predict(images, needs=needs, generator=generator, removed=removed)
        out, removed = p.encoded, p.removed
        loss = masked_l1_loss(p.pred, p.target, removed)
        features = {"cls": out.cls, "mean": out.tokens.mean(dim=1), "tokens": out.tokens,
                    "patch_embed": out.patch_embeddings,
                    **{f"block.{i}": x for i, x in out.pooled_blocks.items()}}
        if {"visible_tokens", "visible_patch_embed"} & needs:
            # CLUB pairs input and output tokens of the visible patches (every image shows as many)
            visible = (removed == 0).nonzero()[:, 1].view(removed.shape[0], -1)
            features["visible_tokens"] = take_tokens(out.tokens, visible)
            features["visible_patch_embed"] = take_tokens(out.patch_embeddings, visible)
        return MethodOutput({"rec": loss}, features)
