"""VCReg: VICReg's variance and covariance terms on one feature, as a regularizer."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mimreg.bounds import bounded
from mimreg.methods.vicreg import covariance_loss, variance_loss
from mimreg.numerics import fp32_loss
from mimreg.regularizers.base import Regularizer, register


@fp32_loss
def vcreg_loss(z: torch.Tensor, var_weight: float = 25.0, cov_weight: float = 1.0,
               eps: float = 1e-4) -> torch.Tensor:
    """VICReg (Bardes et al., ICLR 2022) Eq. 1-4 without the invariance term, on one (B, D) feature:
    var_weight * mean_j relu(1 - sqrt(Var z_j + eps)) + cov_weight * sum_{i != j} Cov(z)_ij^2 / D.

    z: (B, D), B >= 2; fp32 inside (fp64 stays fp64). Returns a scalar. The terms are the vicreg
    method's own functions (gamma 1, unbiased variance and covariance).
    """
    if z.dim() != 2 or z.shape[0] < 2:
        raise ValueError(f"vcreg_loss needs a (B, D) tensor with B >= 2, got shape {tuple(z.shape)}")
    return var_weight * variance_loss(z, eps) + cov_weight * covariance_loss(z)


@dataclass
class VcregOptions:
    feature: str = "cls"  # cls, mean, block.<i>, or one view's emb.<v>
    var_weight: float = bounded(25.0, ge=0)  # VICReg's mu (official main_vicreg.py --std-coeff)
    cov_weight: float = bounded(1.0, ge=0)  # VICReg's nu (--cov-coeff)
    eps: float = bounded(1e-4, gt=0)  # VICReg's, inside the square root of the variance


@register
class Vcreg(Regularizer):
    """VCReg on one feature; `weight` multiplies var_weight * v + cov_weight * c. Gathered by
    default, as VICReg's official code gathers the embeddings of all GPUs (FullGatherLayer)."""

    name = "vcreg"
    paper = "VCReg: VICReg (Bardes et al., ICLR 2022) Eq. 1-4, variance + covariance terms"
    summary = "keep each dimension's batch std above 1 and decorrelate the dimensions of one feature"
    Options = VcregOptions
    default_weight = 1.0

    def reads(self) -> tuple[str, ...]:
        return (self.options.feature,)

    def loss(self, z: torch.Tensor) -> torch.Tensor:
        o = self.options
        return vcreg_loss(z, o.var_weight, o.cov_weight, o.eps)
