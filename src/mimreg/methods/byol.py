"""BYOL (Grill et al., NeurIPS 2020): predict an EMA target network's embedding of the other view."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch

from mimreg.bounds import bounded
from mimreg.methods.base import MethodOutput, register
from mimreg.methods.joint import JointEmbedding, ViewsBatchNorm, mlp
from mimreg.models import Encoder
from mimreg.numerics import fp32_loss


@fp32_loss
def byol_loss(p: torch.Tensor, z: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """BYOL Eq. 2: 2 - 2 cos(p, sg(z)), mean over rows; p, z (N, d). fp32; z is detached here."""
    z = z.detach()
    cos = (p * z).sum(1) * torch.rsqrt((p * p).sum(1).clamp_min(eps * eps) * (z * z).sum(1).clamp_min(eps * eps))
    return (2 - 2 * cos).mean()


def cosine_momentum(base: float, progress: float) -> float:
    """BYOL's schedule: tau = 1 - (1 - base) (cos(pi progress) + 1) / 2, from base to 1."""
    return 1 - (1 - base) * (math.cos(math.pi * min(1.0, progress)) + 1) / 2


@dataclass
class BYOLOptions(ViewsBatchNorm):
    momentum: float = bounded(0.99, ge=0, le=1)  # tau_base (solo-learn CIFAR; 0.996 for ImageNet)
    proj_hidden_dim: int = bounded(4096, ge=1)
    proj_output_dim: int = bounded(256, ge=1)
    pred_hidden_dim: int = bounded(4096, ge=1)


@register
class BYOL(JointEmbedding):
    name = "byol"
    paper = "BYOL (Grill et al., NeurIPS 2020), Eq. 2"
    summary = "online network predicts an EMA target network's embedding of the other view"
    Options = BYOLOptions

    def __init__(self, encoder: Encoder, options: BYOLOptions):
        o = options
        super().__init__(encoder, options, mlp([encoder.embed_dim, o.proj_hidden_dim, o.proj_output_dim]))
        self.predictor = mlp([o.proj_output_dim, o.pred_hidden_dim, o.proj_output_dim])
        self.target_encoder = copy.deepcopy(encoder).requires_grad_(False)
        self.target_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self.register_buffer("tau", torch.tensor(o.momentum, dtype=torch.float64))  # saved: exact resume

    def forward(self, images, *, needs=frozenset(), generator=None) -> MethodOutput:
        (z1, z2), features = self.embed(images, needs)
        p1, p2 = self.through_views(self.predictor, [z1, z2])
        with torch.no_grad():
            (t1, t2), _ = self.embed(images, frozenset(), self.target_projector, self.target_encoder)
        loss = byol_loss(p1, t2) + byol_loss(p2, t1)
        return MethodOutput({"byol": loss}, features)

    @torch.no_grad()
    def on_step_end(self, progress: float) -> None:
        for online, target in ((self.encoder, self.target_encoder), (self.projector, self.target_projector)):
            for p_o, p_t in zip(online.parameters(), target.parameters()):
                p_t.lerp_(p_o, 1 - float(self.tau))
            for b_o, b_t in zip(online.buffers(), target.buffers()):
                b_t.copy_(b_o)
        self.tau.fill_(cosine_momentum(self.options.momentum, progress))
