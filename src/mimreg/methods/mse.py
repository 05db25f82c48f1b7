"""L_MSE (the invariance-only baseline of T-REGS): collapses alone, trains with T-REGS."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mimreg.bounds import bounded
from mimreg.methods.base import MethodOutput, register
from mimreg.methods.joint import JointEmbedding, ViewsBatchNorm, mlp
from mimreg.models import Encoder
from mimreg.numerics import fp32_loss


@fp32_loss
def invariance_loss(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """T-REGS slides, L_MSE: mean over N x d of (z1 - z2)^2 between two views; z1, z2 (N, d). fp32."""
    return F.mse_loss(z1, z2)


@dataclass
class MSEOptions(ViewsBatchNorm):
    weight: float = bounded(10.0, gt=0)  # beta of T-REGS (spec §4.3), on F.mse_loss (mean over N x d)
    proj_hidden_dim: int = bounded(2048, ge=1)
    proj_output_dim: int = bounded(2048, ge=1)


@register
class MSE(JointEmbedding):
    name = "mse"
    paper = "T-REGS (slides, Tab. 1-4): L_MSE baseline"
    summary = "invariance only (mean squared error between two views' embeddings); pair it with mst"
    Options = MSEOptions

    def __init__(self, encoder: Encoder, options: MSEOptions):
        dims = [encoder.embed_dim, options.proj_hidden_dim, options.proj_hidden_dim, options.proj_output_dim]
        super().__init__(encoder, options, mlp(dims))

    def forward(self, images, *, needs=frozenset(), generator=None) -> MethodOutput:
        (z1, z2), features = self.embed(images, needs)
        return MethodOutput({"mse": self.options.weight * invariance_loss(z1, z2)}, features)
