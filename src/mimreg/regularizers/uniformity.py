"""U-MAE's uniformity loss against dimensional collapse."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mimreg.bounds import bounded
from mimreg.regularizers.base import Regularizer, register
from mimreg.numerics import fp32_loss


@fp32_loss
def uniformity_loss(features: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """U-MAE Eq. 11 (code form, spec §2.1): mean over all B x B entries of (f_i . f_j)^2, f = z / ||z||.

    features: (B, D), any dtype; computed in fp32 (fp64 stays fp64). Returns a scalar. The diagonal
    is included as in the official code: it adds the constant 1/B and no gradient.
    """
    f = features.float() if features.dtype != torch.float64 else features
    f = f * torch.rsqrt((f * f).sum(dim=1, keepdim=True).clamp_min(eps * eps))
    return (f @ f.T).pow(2).mean()


@dataclass
class UniformityOptions:
    feature: str = "cls"  # which method feature to spread out: cls after the final norm by default
    eps: float = bounded(1e-12, gt=0)


@register
class Uniformity(Regularizer):
    name = "uniformity"
    paper = "U-MAE (Zhang et al., NeurIPS 2022), Eq. 11"
    summary = "spread the L2-normalised cls features over the sphere (against dimensional collapse)"
    Options = UniformityOptions
    default_weight = 0.01

    def reads(self) -> tuple[str, ...]:
        return (self.options.feature,)

    def loss(self, features: torch.Tensor) -> torch.Tensor:
        return uniformity_loss(features, self.options.eps)
