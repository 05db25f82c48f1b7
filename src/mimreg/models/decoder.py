"""MAE's lightweight decoder: visible latents + mask tokens -> pixels of every patch."""

from __future__ import annotations

import torch
from timm.models.vision_transformer import Block
from torch import nn

from mimreg.models.masking import take_tokens
from mimreg.models.pos_embed import sincos_2d
from mimreg.models.vit import init_mae_weights, run_block


class MAEDecoder(nn.Module):
    def __init__(self, embed_dim: int, grid_size: int, patch_size: int, dim: int = 128,
                 depth: int = 2, num_heads: int = 4):
        super().__init__()
        self.embed = nn.Linear(embed_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("pos_embed", sincos_2d(dim, grid_size).unsqueeze(0), persistent=False)
        self.blocks = nn.ModuleList(
            Block(dim, num_heads, mlp_ratio=4.0, qkv_bias=True, norm_layer=_layer_norm) for _ in range(depth)
        )
        self.norm = _layer_norm(dim)
        self.predict = nn.Linear(dim, patch_size**2 * 3)
        self.grad_checkpointing = False
        init_mae_weights(self)

    def no_weight_decay(self) -> set[str]:
        return {"mask_token"}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in backward (timm's switch, for the decoder)."""
        self.grad_checkpointing = enable

    def forward(self, latent: torch.Tensor, restore_ids: torch.Tensor) -> torch.Tensor:
        """latent (B, 1 + N_vis, D) with cls first; restore_ids (B, L) -> (B, L, p*p*3)."""
        x = self.embed(latent)
        batch, length = restore_ids.shape
        masked = self.mask_token.expand(batch, length - (x.shape[1] - 1), -1)
        patches = take_tokens(torch.cat([x[:, 1:], masked], dim=1), restore_ids)
        x = torch.cat([x[:, :1], patches], dim=1) + self.pos_embed
        for block in self.blocks:
            x = run_block(block, x, self.grad_checkpointing)
        return self.predict(self.norm(x))[:, 1:]


def _layer_norm(dim: int, **kwargs) -> nn.LayerNorm:
    return nn.LayerNorm(dim, eps=1e-6, **kwargs)
