"""MAE (He et al., CVPR 2022): reconstruct the pixels of masked patches from the visible ones."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mimreg.bounds import bounded, one_of
from mimreg.errors import ConfigError
from mimreg.methods.base import Method, MethodOutput, Prediction, check_visible, pooled_block_indices, register
from mimreg.models import MAEDecoder, Mask, ViTEncoder, mask_noise, orthogonal_masks, patchify, random_mask
from mimreg.models.masking import num_visible
from mimreg.numerics import fp32_loss


@fp32_loss
def reconstruction_loss(pred: torch.Tensor, target: torch.Tensor, removed: torch.Tensor,
                        norm_pix: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """MAE (He et al., CVPR 2022), §3 "Reconstruction target": per-patch MSE over masked patches only.

    pred, target: (B, L, p*p*3); removed: (B, L), 1 where masked. With norm_pix each target patch
    is standardised by its own mean and unbiased variance. Computed in fp32.
    """
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / torch.sqrt(var + eps)
    per_patch = (pred - target).pow(2).mean(dim=-1)
    removed = removed.to(pred.dtype)
    return (per_patch * removed).sum() / removed.sum().clamp_min(1.0)


@dataclass
class MAEOptions:
    mask_ratio: float = bounded(0.75, gt=0, lt=1)
    norm_pix_loss: bool = True
    decoder_dim: int = bounded(128, ge=1)
    decoder_depth: int = bounded(2, ge=1)
    decoder_heads: int = bounded(4, ge=1)
    num_masks: int = bounded(1, ge=1)  # K masked views per image, encoded in one batched pass (MI-MAE: 4)
    mask_mode: str = one_of("orthogonal", "orthogonal", "independent")  # with num_masks > 1: disjoint visible sets, or "independent"


@register
class MAE(Method):
    name = "mae"
    paper = "MAE (He et al., CVPR 2022)"
    summary = "masked autoencoder: encode 25% visible patches, reconstruct the pixels of the rest"
    Options = MAEOptions

    def __init__(self, encoder: ViTEncoder, options: MAEOptions):
        super().__init__(encoder, options)
        if options.num_masks < 1 or options.mask_mode not in ("orthogonal", "independent"):
            raise ConfigError("method.num_masks must be >= 1 and method.mask_mode 'orthogonal' or 'independent'")
        self.decoder = MAEDecoder(encoder.embed_dim, encoder.grid_size, encoder.patch_size,
                                  options.decoder_dim, options.decoder_depth, options.decoder_heads)

    @classmethod
    def check_options(cls, options: MAEOptions, img_size: int, patch_size: int) -> None:
        cells = (img_size // patch_size) ** 2
        disjoint = options.num_masks if options.mask_mode == "orthogonal" else 1
        check_visible(options.mask_ratio, num_visible(cells, options.mask_ratio), cells, "patches", img_size,
                      patch_size, disjoint)

    def predict(self, images: torch.Tensor, *, needs: frozenset[str] = frozenset(),
                generator: torch.Generator | None = None, noise: torch.Tensor | None = None) -> Prediction:
        """images (B, 3, H, W); `noise` (B, L) fixes the mask (else drawn from `generator`)."""
        o = self.options
        k = o.num_masks
        if noise is None:
            noise = mask_noise(images.shape[0] * (k if o.mask_mode == "independent" else 1),
                               self.encoder.num_patches, images.device, generator)
        if k == 1:
            mask = random_mask(noise, o.mask_ratio)
        else:  # K views per image, view-major along the batch: rows v * B + i
            images = images.repeat(k, 1, 1, 1)
            views = (orthogonal_masks(noise, k, o.mask_ratio) if o.mask_mode == "orthogonal"
                     else [random_mask(noise, o.mask_ratio)])
            mask = Mask(*(torch.cat([getattr(m, f) for m in views]) for f in ("keep_ids", "restore_ids", "removed")))
        out = self.encoder.forward_masked(images, mask.keep_ids, pooled_block_indices(needs))
        latent = torch.cat([out.cls.unsqueeze(1), out.tokens], dim=1)
        pred = self.decoder(latent, mask.restore_ids)
        return Prediction(pred, patchify(images, self.encoder.patch_size), mask.removed, o.norm_pix_loss, out)

    def forward(self, images: torch.Tensor, *, needs: frozenset[str] = frozenset(),
                generator: torch.Generator | None = None, noise: torch.Tensor | None = None) -> MethodOutput:
        """images (B, 3, H, W); `noise` (B, L) fixes the mask (else drawn from `generator`)."""
        p = self.predict(images, needs=needs, generator=generator, noise=noise)
        loss = reconstruction_loss(p.pred, p.target, p.removed, p.norm_pix)
        out = p.encoded
        features = {"cls": out.cls, "mean": out.tokens.mean(dim=1), "tokens": out.tokens,
                    "patch_embed": out.patch_embeddings}
        features.update({f"block.{i}": x for i, x in out.pooled_blocks.items()})
        return MethodOutput(losses={"rec": loss}, features=features)
