"""VICReg (Bardes et al., ICLR 2022): invariance, variance and covariance terms on two views."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mimreg.bounds import bounded
from mimreg.distributed import gather_with_grad
from mimreg.methods.base import MethodOutput, register
from mimreg.methods.joint import JointEmbedding, ViewsBatchNorm, mlp
from mimreg.models import Encoder
from mimreg.numerics import fp32_loss


@fp32_loss
def variance_loss(z: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """VICReg Eq. 1: mean over dims of relu(1 - sqrt(var + eps)); z (N, d), N >= 2."""
    std = torch.sqrt(z.var(dim=0) + eps)
    return F.relu(1 - std).mean()


@fp32_loss
def covariance_loss(z: torch.Tensor) -> torch.Tensor:
    """VICReg Eq. 3: sum of squared off-diagonal covariances / d; z (N, d), N >= 2."""
    n, d = z.shape
    centred = z - z.mean(dim=0)
    cov = centred.T @ centred / (n - 1)
    off = cov - torch.diag(torch.diagonal(cov))
    return off.pow(2).sum() / d


@fp32_loss
def vicreg_terms(z1, z2, z1_all=None, z2_all=None) -> dict[str, torch.Tensor]:
    """Unweighted VICReg terms (solo-learn form, no /2 on the std terms): invariance on the local
    pair (N, d); variance and covariance on the global batch (z*_all) when given. fp32."""
    z1_all = z1 if z1_all is None else z1_all
    z2_all = z2 if z2_all is None else z2_all
    return {"invariance": F.mse_loss(z1, z2),
            "variance": variance_loss(z1_all) + variance_loss(z2_all),
            "covariance": covariance_loss(z1_all) + covariance_loss(z2_all)}


@dataclass
class VICRegOptions(ViewsBatchNorm):
    sim_weight: float = bounded(25.0, ge=0)
    var_weight: float = bounded(25.0, ge=0)
    cov_weight: float = bounded(1.0, ge=0)
    proj_hidden_dim: int = bounded(2048, ge=1)
    proj_output_dim: int = bounded(2048, ge=1)
    gather: bool = True  # variance and covariance over the global batch


@register
class VICReg(JointEmbedding):
    name = "vicreg"
    paper = "VICReg (Bardes et al., ICLR 2022), Eq. 1-6"
    summary = "invariance + variance + covariance regularisation of two views' embeddings"
    Options = VICRegOptions

    def __init__(self, encoder: Encoder, options: VICRegOptions):
        dims = [encoder.embed_dim, options.proj_hidden_dim, options.proj_hidden_dim, options.proj_output_dim]
        super().__init__(encoder, options, mlp(dims))

    def forward(self, images, *, needs=frozenset(), generator=None) -> MethodOutput:
        (z1, z2), features = self.embed(images, needs)
        g1, g2 = (gather_with_grad(z1), gather_with_grad(z2)) if self.options.gather else (z1, z2)
        terms = vicreg_terms(z1, z2, g1, g2)
        o = self.options
        weights = {"invariance": o.sim_weight, "variance": o.var_weight, "covariance": o.cov_weight}
        return MethodOutput({name: weights[name] * value for name, value in terms.items()}, features)
