"""MAE (He et al., CVPR 2022): reconstruct the pixels of masked patches from the visible ones."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mimreg.methods.base import Method, MethodOutput, pooled_block_indices, register
from mimreg.models import MAEDecoder, ViTEncoder, mask_noise, patchify, random_mask


def reconstruction_loss(pred: torch.Tensor, target: torch.Tensor, removed: torch.Tensor,
                        norm_pix: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """MAE (He et al., CVPR 2022), §3 "Reconstruction target": per-patch MSE over masked patches only.

    pred, target: (B, L, p*p*3); removed: (B, L), 1 where masked. With norm_pix each target patch
    is standardised by its own mean and unbiased variance. Computed in fp32.
    """
    pred, target = pred.float(), target.float()
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / torch.sqrt(var + eps)
    per_patch = (pred - target).pow(2).mean(dim=-1)
    removed = removed.float()
    return (per_patch * removed).sum() / removed.sum().clamp_min(1.0)


@dataclass
class MAEOptions:
    mask_ratio: float = 0.75
    norm_pix_loss: bool = True
    decoder_dim: int = 128
    decoder_depth: int = 2
    decoder_heads: int = 4


@register
class MAE(Method):
    name = "mae"
    paper = "MAE (He et al., CVPR 2022)"
    summary = "masked autoencoder: encode 25% visible patches, reconstruct the pixels of the rest"
    Options = MAEOptions

    def __init__(self, encoder: ViTEncoder, options: MAEOptions):
        super().__init__(encoder, options)
        self.decoder = MAEDecoder(encoder.embed_dim, encoder.grid_size, encoder.patch_size,
                                  options.decoder_dim, options.decoder_depth, options.decoder_heads)

    def forward(self, images: torch.Tensor, *, needs: frozenset[str] = frozenset(),
                generator: torch.Generator | None = None, noise: torch.Tensor | None = None) -> MethodOutput:
        """images (B, 3, H, W); `noise` (B, L) fixes the mask (else drawn from `generator`)."""
        if noise is None:
            noise = mask_noise(images.shape[0], self.encoder.num_patches, images.device, generator)
        mask = random_mask(noise, self.options.mask_ratio)
        out = self.encoder.forward_masked(images, mask.keep_ids, pooled_block_indices(needs))
        latent = torch.cat([out.cls.unsqueeze(1), out.tokens], dim=1)
        pred = self.decoder(latent, mask.restore_ids)
        target = patchify(images, self.encoder.patch_size)
        loss = reconstruction_loss(pred, target, mask.removed, self.options.norm_pix_loss)
        features = {"cls": out.cls, "mean": out.tokens.mean(dim=1), "tokens": out.tokens,
                    "patch_embed": out.patch_embeddings}
        features.update({f"block.{i}": x for i, x in out.pooled_blocks.items()})
        return MethodOutput(losses={"rec": loss}, features=features)
