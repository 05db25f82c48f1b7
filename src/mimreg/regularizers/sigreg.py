"""SIGReg (LeJEPA): the sliced Epps-Pulley statistic of embeddings against an isotropic Gaussian."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from mimreg.bounds import bounded
from mimreg.distributed import all_reduce_sum_with_grad
from mimreg.epps_pulley import epps_pulley_quadrature, sigreg_loss
from mimreg.regularizers.base import Regularizer, register, require_features
from mimreg.slices import SliceSteps, unit_slices

__all__ = ["Sigreg", "SigregOptions", "epps_pulley_quadrature", "sigreg_loss", "unit_slices"]


@dataclass
class SigregOptions:
    features: list[str] = field(default_factory=lambda: ["emb.0", "emb.1"])  # per view: each tested alone
    # lejepa README and lightly: 1024 slices (the paper's listing and MINIMAL.md draw 256)
    slices: int = bounded(1024, ge=1)
    knots: int = bounded(17, ge=2)  # lejepa EppsPulley: 17 knots on [0, t_max]
    t_max: float = bounded(3.0, gt=0)


@register
class Sigreg(Regularizer):
    """SIGReg on each listed feature (a view's projector embeddings), averaged over them; the
    slices are the same for every view of a step and on every process.

    The slices of call k are seeded with k (`SliceSteps`: counted in a buffer, restored on
    resume, no host sync). The statistic is mimreg.epps_pulley's. With gather (the
    default) the sums of cos and sin and the count are summed over processes by a
    gradient-carrying all-reduce: the statistic and its gradient are those of the global batch.
    """

    name = "sigreg"
    paper = "LeJEPA (Balestriero & LeCun, 2025), Eq. 11-12 (SIGReg, Epps-Pulley)"
    summary = "push each view's embeddings towards an isotropic standard Gaussian along random slices"
    Options = SigregOptions
    default_weight = 0.05  # LeJEPA's lambda (lightly's LeJEPALoss default)

    def setup(self, depth: int) -> None:
        self.slice_steps = SliceSteps()

    @classmethod
    def check_options(cls, options: SigregOptions, key: str) -> None:
        super().check_options(options, key)
        require_features(options.features, key, "[emb.0, emb.1]")

    def reads(self) -> tuple[str, ...]:
        return tuple(self.options.features)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        views = torch.stack([features[name] for name in self.reads()])
        return self.loss(views)

    def loss(self, views: torch.Tensor) -> torch.Tensor:
        o = self.options
        reduce = all_reduce_sum_with_grad if self.gather else None
        return sigreg_loss(views, self.slice_steps.draw(views.shape[-1], o.slices, views.device), o.knots, o.t_max, reduce)
