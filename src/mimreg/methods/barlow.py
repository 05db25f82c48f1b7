"""Barlow Twins (Zbontar et al., ICML 2021): the cross-correlation of two views towards identity."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mimreg.distributed import gather_with_grad
from mimreg.methods.base import MethodOutput, register
from mimreg.methods.joint import JointEmbedding, mlp
from mimreg.models import ViTEncoder
from mimreg.numerics import fp32_loss


@fp32_loss
def barlow_loss(z1: torch.Tensor, z2: torch.Tensor, lambd: float = 0.0051, eps: float = 1e-5) -> torch.Tensor:
    """Barlow Twins Eq. 1: sum_i (1 - c_ii)^2 + lambda sum_{i!=j} c_ij^2 with c = z1n^T z2n / N, each
    view standardised over the batch (affine-free BN). z1, z2 (N, d), N >= 2. fp32; scalar."""
    n = z1.shape[0]
    z1 = (z1 - z1.mean(0)) / torch.sqrt(z1.var(0, unbiased=False) + eps)
    z2 = (z2 - z2.mean(0)) / torch.sqrt(z2.var(0, unbiased=False) + eps)
    c = z1.T @ z2 / n
    on_diag = (1 - torch.diagonal(c)).pow(2).sum()
    off_diag = (c - torch.diag(torch.diagonal(c))).pow(2).sum()
    return on_diag + lambd * off_diag


@dataclass
class BarlowOptions:
    lambd: float = 0.0051
    proj_hidden_dim: int = 2048
    proj_output_dim: int = 2048
    gather: bool = True  # the cross-correlation over the global batch


@register
class BarlowTwins(JointEmbedding):
    name = "barlow"
    paper = "Barlow Twins (Zbontar et al., ICML 2021), Eq. 1"
    summary = "drive the cross-correlation of two views' embeddings to the identity"
    Options = BarlowOptions

    def __init__(self, encoder: ViTEncoder, options: BarlowOptions):
        dims = [encoder.embed_dim, options.proj_hidden_dim, options.proj_hidden_dim, options.proj_output_dim]
        super().__init__(encoder, options, mlp(dims))

    def forward(self, images, *, needs=frozenset(), generator=None) -> MethodOutput:
        (z1, z2), features = self.embed(images, needs)
        if self.options.gather:  # concatenating the global batch = summing the per-process c
            z1, z2 = gather_with_grad(z1), gather_with_grad(z2)
        return MethodOutput({"barlow": barlow_loss(z1, z2, self.options.lambd)}, features)
