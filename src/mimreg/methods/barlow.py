"""Barlow Twins (Zbontar et al., ICML 2021): the cross-correlation of two views towards identity."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mimreg.bounds import bounded
from mimreg.distributed import all_reduce_sum_with_grad
from mimreg.methods.base import MethodOutput, register
from mimreg.methods.joint import JointEmbedding, ViewsBatchNorm, mlp
from mimreg.models import Encoder
from mimreg.numerics import fp32_loss


@fp32_loss
def barlow_loss(z1: torch.Tensor, z2: torch.Tensor, lambd: float = 0.0051, eps: float = 1e-5,
                global_batch: bool = False) -> torch.Tensor:
    """Barlow Twins Eq. 1: sum_i (1 - c_ii)^2 + lambda sum_{i!=j} c_ij^2 with c = z1n^T z2n / N, each
    view standardised over the batch (affine-free BN). z1, z2 (N, d), N >= 2 in all. fp32; scalar.

    With `global_batch` under DDP, N, the per-dimension means and variances and c are sums over all
    processes by gradient-carrying all-reduces (d x d, not N x d, crosses the network): every process
    gets the loss of the global batch. In one process it changes nothing."""
    total = all_reduce_sum_with_grad if global_batch else (lambda x: x)
    n = total(torch.tensor(float(z1.shape[0]), device=z1.device, dtype=z1.dtype))

    def standardised(z):
        mean = total(z.sum(0)) / n
        var = total((z - mean).pow(2).sum(0)) / n
        return (z - mean) / torch.sqrt(var + eps)

    c = total(standardised(z1).T @ standardised(z2)) / n
    on_diag = (1 - torch.diagonal(c)).pow(2).sum()
    off_diag = (c - torch.diag(torch.diagonal(c))).pow(2).sum()
    return on_diag + lambd * off_diag


@dataclass
class BarlowOptions(ViewsBatchNorm):
    lambd: float = bounded(0.0051, gt=0)
    proj_hidden_dim: int = bounded(2048, ge=1)
    proj_output_dim: int = bounded(2048, ge=1)
    gather: bool = True  # statistics and cross-correlation over the global batch


@register
class BarlowTwins(JointEmbedding):
    name = "barlow"
    paper = "Barlow Twins (Zbontar et al., ICML 2021), Eq. 1"
    summary = "drive the cross-correlation of two views' embeddings to the identity"
    Options = BarlowOptions

    def __init__(self, encoder: Encoder, options: BarlowOptions):
        dims = [encoder.embed_dim, options.proj_hidden_dim, options.proj_hidden_dim, options.proj_output_dim]
        super().__init__(encoder, options, mlp(dims))

    def forward(self, images, *, needs=frozenset(), generator=None) -> MethodOutput:
        (z1, z2), features = self.embed(images, needs)
        loss = barlow_loss(z1, z2, self.options.lambd, global_batch=self.options.gather)
        return MethodOutput({"barlow": loss}, features)
