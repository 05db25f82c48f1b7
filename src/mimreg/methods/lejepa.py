"""LeJEPA (Balestriero & LeCun, 2025): every view predicts the centre of the global views, and SIGReg
keeps all views' embeddings an isotropic Gaussian."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mimreg.bounds import bounded, one_of
from mimreg.distributed import all_reduce_sum_with_grad
from mimreg.epps_pulley import sigreg_loss
from mimreg.errors import ConfigError
from mimreg.methods.base import MethodOutput, pooled_block_indices, register
from mimreg.methods.joint import JointEmbedding, ViewsBatchNorm, mlp
from mimreg.models import Encoder
from mimreg.slices import SliceSteps
from mimreg.numerics import fp32_loss

MIXINGS = ("convex", "additive")


@fp32_loss
def lejepa_prediction_loss(z: torch.Tensor, global_views: int) -> torch.Tensor:
    """LeJEPA Eq. 6-7 (official code form): mean over views, samples and dimensions of the squared
    difference between each view's embedding and the mean of the global views' embeddings.

    z: (V, B, d) embeddings of V views, the first `global_views` of them global. fp32; a scalar.
    """
    centre = z[:global_views].mean(dim=0)
    return (centre - z).square().mean()


@dataclass
class LeJEPAOptions(ViewsBatchNorm):
    views: int = bounded(8, ge=2)  # lejepa README: 2 global + 6 local views
    global_views: int = bounded(2, ge=1)  # the first views of each image; the others are local
    sigreg_weight: float = bounded(0.05, ge=0)  # lambda (paper; lightly's LeJEPALoss default)
    # convex: (1 - lambda) prediction + lambda SIGReg (paper, MINIMAL.md, lightly); additive:
    # prediction + lambda SIGReg (stable-pretraining's LeJEPA)
    mixing: str = one_of("convex", *MIXINGS)
    # MINIMAL.md: MLP(512, [2048, 2048, proj_dim]) with BatchNorm, proj_dim 128 (its Imagenette run: 16)
    proj_hidden_dim: int = bounded(2048, ge=1)
    proj_output_dim: int = bounded(128, ge=1)
    slices: int = bounded(1024, ge=1)  # lejepa README: num_slices 1024 (the paper's listing: 256)
    knots: int = bounded(17, ge=2)
    t_max: float = bounded(3.0, gt=0)
    gather: bool = True  # SIGReg's ECF over the global batch of all processes
    bn_views: str = "joint"  # the official projector sees all views as one batch

    def __post_init__(self):
        super().__post_init__()
        if self.global_views > self.views:
            raise ConfigError(f"method.global_views={self.global_views} exceeds method.views={self.views}; "
                              "lower method.global_views")
        if self.mixing == "convex" and self.sigreg_weight > 1:
            raise ConfigError(f"method.sigreg_weight={self.sigreg_weight:g} is above 1 with method.mixing: convex "
                              "((1 - lambda) would weigh the prediction negatively); lower it or set mixing: additive")


@register
class LeJEPA(JointEmbedding):
    """Global and local views of each image (data.augmentation msn gives 2 global views and
    data.focal_views local ones; simclr with data.num_views gives views of one size, all of them
    global with method.global_views = views), encoded per size, one projector over all views.
    Features: `cls` and `block.<i>` of the global views (view-major), `emb.<v>` of every view."""

    name = "lejepa"
    paper = "LeJEPA (Balestriero & LeCun, 2025), Eq. 6-7 and SIGReg"
    summary = "every view predicts the mean of the global views; SIGReg keeps all views an isotropic Gaussian"
    Options = LeJEPAOptions

    def __init__(self, encoder: Encoder, options: LeJEPAOptions):
        dims = [encoder.embed_dim, options.proj_hidden_dim, options.proj_hidden_dim, options.proj_output_dim]
        super().__init__(encoder, options, mlp(dims))
        self.num_views = options.views
        self.slice_steps = SliceSteps()

    def check_views(self, images) -> list[torch.Tensor]:
        got = len(images) if isinstance(images, (list, tuple)) else 1
        if got != self.num_views:
            raise ConfigError(f"method 'lejepa' needs method.views={self.num_views} views per image, got {got}; "
                              f"set data.augmentation: msn with data.focal_views: {self.num_views - 2} (or "
                              "data.num_views with simclr), or method.views to what the data gives")
        return list(images)

    def forward(self, images, *, needs=frozenset(), generator=None) -> MethodOutput:
        views, g = self.check_views(images), self.options.global_views
        out = self.encoder.forward_masked(torch.cat(views[:g]), None, pooled_block_indices(needs))
        cls = [out.cls] if g == len(views) else [out.cls, self.encoder.forward_masked(torch.cat(views[g:]), None).cls]
        z = torch.stack(self.through_views(self.projector, list(torch.cat(cls).chunk(len(views)))))
        features = {"cls": out.cls, **{f"block.{i}": x for i, x in out.pooled_blocks.items()},
                    **{f"emb.{v}": x for v, x in enumerate(z)}}
        return MethodOutput(self.terms(z), features)

    def terms(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """The two weighted terms on (V, B, d) embeddings: prediction and SIGReg (over all views)."""
        o = self.options
        slices = self.slice_steps.draw(z.shape[-1], o.slices, z.device)
        reduce = all_reduce_sum_with_grad if o.gather else None
        sigreg = sigreg_loss(z, slices, o.knots, o.t_max, reduce)
        prediction = lejepa_prediction_loss(z, o.global_views)
        keep = 1 - o.sigreg_weight if o.mixing == "convex" else 1.0
        return {"prediction": keep * prediction, "sigreg": o.sigreg_weight * sigreg}
