"""KoLeo: the Kozachenko-Leonenko entropy estimator as a spreading loss (nearest-neighbour distances)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from mimreg.bounds import bounded
from mimreg.numerics import fp32_loss
from mimreg.regularizers.base import Regularizer, register, require_features


@fp32_loss
def koleo_loss(features: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """KoLeo (Sablayrolles et al., ICLR 2019, L_KoLeo; DINOv2's dinov2/loss/koleo_loss.py code form):
    -(1/B) sum_i log(||f_i - f_j(i) + eps||_2 + eps), f = z / max(||z||, eps), j(i) the nearest other row.

    features: (B, D), B >= 2, any dtype; fp32 inside (fp64 stays fp64). Returns a scalar. The
    neighbour is chosen without gradient (largest dot product, the row itself excluded); the eps
    inside the norm is torch's PairwiseDistance(eps=1e-8) as DINOv2 uses it: duplicates then have a
    finite distance and gradient.
    """
    if features.dim() != 2 or features.shape[0] < 2:
        raise ValueError(f"koleo_loss needs a (B, D) tensor with B >= 2, got shape {tuple(features.shape)}")
    f = features if features.dtype == torch.float64 else features.float()
    f = f / f.norm(dim=1, keepdim=True).clamp_min(eps)
    with torch.no_grad():
        dots = f @ f.T
        # DINOv2 fills the diagonal with -1, which picks the row itself when its only other point is
        # antipodal (dot -1 too, the tie goes to the first index); -inf never does, and agrees otherwise
        dots.fill_diagonal_(float("-inf"))
        nearest = dots.argmax(dim=1)
    distances = (f - f[nearest] + eps).norm(dim=1)
    return -torch.log(distances + eps).mean()


@dataclass
class KoLeoOptions:
    # one loss per feature, summed: DINOv2 sums it over its 2 global crops, each crop's batch alone
    # (never across the crops of one image); on the joint methods `cls` stacks the views, so per view
    # there means emb.0 and emb.1
    features: list[str] = field(default_factory=lambda: ["cls"])
    eps: float = bounded(1e-8, gt=0)  # DINOv2's, in F.normalize, PairwiseDistance and the log


@register
class KoLeo(Regularizer):
    """KoLeo on each listed feature (its batch alone), summed; `weight` multiplies the total.

    DINOv2 computes it on each GPU's local batch (ssl_meta_arch.py, no gather): so `gather` is false
    by default here. With `gather: true` the nearest neighbours are searched in the global batch.
    """

    name = "koleo"
    paper = "KoLeo (Sablayrolles et al., ICLR 2019), L_KoLeo in DINOv2's code form"
    summary = "spread the L2-normalised features by pushing each away from its nearest neighbour in the batch"
    Options = KoLeoOptions
    default_weight = 0.1  # DINOv2's dino.koleo_loss_weight (dinov2/configs/ssl_default_config.yaml)
    default_gather = False

    @classmethod
    def check_options(cls, options: KoLeoOptions, key: str) -> None:
        super().check_options(options, key)
        require_features(options.features, key)

    def reads(self) -> tuple[str, ...]:
        return tuple(self.options.features)

    def loss(self, *features: torch.Tensor) -> torch.Tensor:
        return torch.stack([koleo_loss(f, self.options.eps) for f in features]).sum()
