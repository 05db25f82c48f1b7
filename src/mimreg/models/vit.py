"""ViT encoder: timm's VisionTransformer with fixed sin-cos positions and a masked forward."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import torch
import torch.utils.checkpoint
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from mimreg.errors import ConfigError
from mimreg.models.masking import take_tokens
from mimreg.models.pos_embed import sincos_2d

# name -> (embed_dim, depth, num_heads)
VIT_ARCHS: dict[str, tuple[int, int, int]] = {
    "vit_micro": (128, 6, 4),
    "vit_tiny": (192, 12, 3),
    "vit_small": (384, 12, 6),
    "vit_base": (768, 12, 12),
    "vit_large": (1024, 24, 16),
}


@dataclass
class EncoderOutput:
    """What one encoder pass returns.

    cls: (B, D) cls token after the final norm.
    tokens: (B, N, D) patch tokens after the final norm (visible ones only when masked).
    pooled_blocks: block index -> (B, D) block output before the final norm, mean over the
        patch tokens that went through the encoder (cls excluded): MAGMA's features.
    patch_embeddings: (B, N, D) the encoder's input patch tokens (patch embed + position).
    """

    cls: torch.Tensor
    tokens: torch.Tensor
    pooled_blocks: dict[int, torch.Tensor] = field(default_factory=dict)
    patch_embeddings: torch.Tensor | None = None


class ViTEncoder(nn.Module):
    """Wraps (does not fork) `timm` VisionTransformer; `self.vit` keeps timm's parameter names."""

    def __init__(self, arch: str = "vit_micro", img_size: int = 32, patch_size: int = 4,
                 drop_path: float = 0.0):
        super().__init__()
        if arch not in VIT_ARCHS:
            raise ConfigError(f"unknown model.arch {arch!r} for a ViT; choose one of {sorted(VIT_ARCHS)}")
        if img_size % patch_size:
            raise ConfigError(f"image size {img_size} is not a multiple of model.patch_size {patch_size}")
        dim, depth, heads = VIT_ARCHS[arch]
        self.arch, self.img_size, self.patch_size = arch, img_size, patch_size
        self.embed_dim, self.depth, self.num_heads = dim, depth, heads
        self.vit = VisionTransformer(
            img_size=img_size, patch_size=patch_size, embed_dim=dim, depth=depth, num_heads=heads,
            mlp_ratio=4.0, qkv_bias=True, num_classes=0, drop_path_rate=drop_path,
        )
        self.grid_size = img_size // patch_size
        self.num_patches = self.grid_size**2
        with torch.no_grad():
            self.vit.pos_embed.copy_(sincos_2d(dim, self.grid_size).unsqueeze(0))
        self.vit.pos_embed.requires_grad_(False)
        init_mae_weights(self.vit)

    def block_index(self, index: int) -> int:
        """Absolute block index from a possibly negative one (-1 = last block)."""
        absolute = index + self.depth if index < 0 else index
        if not 0 <= absolute < self.depth:
            raise ConfigError(f"block index {index} is out of range for {self.arch} with {self.depth} blocks")
        return absolute

    def embed_patches(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, L, D) patch tokens with their position embedding, no cls. Smaller
        square images (e.g. MSN's focal views) get the position grid resized bicubically."""
        grid = images.shape[-1] // self.patch_size
        if grid == self.grid_size:
            return self.vit.patch_embed(images) + self.vit.pos_embed[:, 1:]
        pos = self.vit.pos_embed[:, 1:].reshape(1, self.grid_size, self.grid_size, -1).permute(0, 3, 1, 2)
        pos = torch.nn.functional.interpolate(pos, size=(grid, grid), mode="bicubic", align_corners=False)
        tokens = self.vit.patch_embed.proj(images).flatten(2).transpose(1, 2)  # any size, same weights
        return tokens + pos.flatten(2).transpose(1, 2)

    def forward_tokens(self, patch_tokens: torch.Tensor, pooled_blocks: Iterable[int] = ()) -> EncoderOutput:
        """Run cls + the given patch tokens (B, N, D) through the blocks and the final norm."""
        cls = (self.vit.cls_token + self.vit.pos_embed[:, :1]).expand(patch_tokens.shape[0], -1, -1)
        x = torch.cat([cls, patch_tokens], dim=1)
        wanted = set(pooled_blocks)
        pooled: dict[int, torch.Tensor] = {}
        for i, block in enumerate(self.vit.blocks):
            x = run_block(block, x, self.vit.grad_checkpointing)
            if i in wanted:
                pooled[i] = x[:, 1:].mean(dim=1)
        x = self.vit.norm(x)
        return EncoderOutput(cls=x[:, 0], tokens=x[:, 1:], pooled_blocks=pooled,
                             patch_embeddings=patch_tokens)

    def forward_masked(self, images: torch.Tensor, keep_ids: torch.Tensor | None,
                       pooled_blocks: Iterable[int] = ()) -> EncoderOutput:
        """Encode only the patches in keep_ids (B, N_vis) plus cls; all patches when None."""
        tokens = self.embed_patches(images)
        if keep_ids is not None:
            tokens = take_tokens(tokens, keep_ids)
        return self.forward_tokens(tokens, pooled_blocks)

    @torch.no_grad()
    def features(self, images: torch.Tensor, pool: str = "cls") -> torch.Tensor:
        """Frozen-encoder features of unmasked images: `cls` or `mean` of the normed patch tokens."""
        out = self.forward_masked(images, None)
        if pool == "cls":
            return out.cls
        if pool == "mean":
            return out.tokens.mean(dim=1)
        raise ConfigError(f"unknown feature pool {pool!r}; choose 'cls' or 'mean'")

    def no_weight_decay(self) -> set[str]:
        return {"vit." + name for name in self.vit.no_weight_decay()}


def run_block(block: nn.Module, x: torch.Tensor, checkpointed: bool) -> torch.Tensor:
    """`block(x)`; `checkpointed` (while gradients are on) stores only its input and recomputes its
    activations in backward (same values: the RNG state of drop_path is replayed)."""
    if checkpointed and torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
    return block(x)


def init_mae_weights(module: nn.Module) -> None:
    """MAE init: xavier-uniform Linear (and patch conv as a Linear), zero bias, N(0, .02) tokens."""
    for name, sub in module.named_modules():
        if isinstance(sub, nn.Linear):
            nn.init.xavier_uniform_(sub.weight)
            if sub.bias is not None:
                nn.init.zeros_(sub.bias)
        elif isinstance(sub, nn.LayerNorm):
            nn.init.ones_(sub.weight)
            nn.init.zeros_(sub.bias)
        elif isinstance(sub, nn.Conv2d):
            nn.init.xavier_uniform_(sub.weight.view(sub.weight.shape[0], -1))
            if sub.bias is not None:
                nn.init.zeros_(sub.bias)
    for token_name in ("cls_token", "mask_token"):
        token = getattr(module, token_name, None)
        if isinstance(token, nn.Parameter):
            nn.init.normal_(token, std=0.02)
