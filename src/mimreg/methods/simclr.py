"""SimCLR (Chen et al., ICML 2020): pull two views of an image together, push other images away."""

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
def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.2, eps: float = 1e-12) -> torch.Tensor:
    """SimCLR Eq. 1 (NT-Xent), log-sum-exp form: z1, z2 (N, d) embeddings of two views; positives
    are rows with the same index, negatives the other 2N-2 rows. fp32; returns a scalar."""
    z = torch.cat([z1, z2])
    z = z * torch.rsqrt((z * z).sum(dim=1, keepdim=True).clamp_min(eps * eps))
    n = z1.shape[0]
    logits = z @ z.T / temperature
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(logits, targets)


@dataclass
class SimCLROptions(ViewsBatchNorm):
    temperature: float = bounded(0.2, gt=0)
    proj_hidden_dim: int = bounded(2048, ge=1)
    proj_output_dim: int = bounded(256, ge=1)
    gather: bool = True  # negatives from the global batch of all processes
    bn_views: str = "joint"  # SimCLR's official code normalises both views as one batch


@register
class SimCLR(JointEmbedding):
    name = "simclr"
    paper = "SimCLR (Chen et al., ICML 2020)"
    summary = "contrastive: two views of an image attract, all other images in the global batch repel"
    Options = SimCLROptions

    def __init__(self, encoder: Encoder, options: SimCLROptions):
        super().__init__(encoder, options, mlp([encoder.embed_dim, options.proj_hidden_dim, options.proj_output_dim]))

    def forward(self, images, *, needs=frozenset(), generator=None) -> MethodOutput:
        (z1, z2), features = self.embed(images, needs)
        if self.options.gather:
            z1, z2 = gather_with_grad(z1), gather_with_grad(z2)
        return MethodOutput({"nt_xent": nt_xent_loss(z1, z2, self.options.temperature)}, features)
