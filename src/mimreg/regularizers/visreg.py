"""VISReg: centre, scale and sliced-Wasserstein shape terms toward an isotropic Gaussian.

The formulas and defaults follow lightly's `lightly/loss/visreg_loss.py` (VISRegLoss, citing
VISReg, Wu et al. 2026, arXiv 2606.02572, Algorithm 1 and Eq. 1, 2, 5, 6): each term per view with
the view's own batch statistics, the same slices for every view, lambda_scale = lambda_shape =
lambda_center = 1, 4096 slices, eps 1e-4, and no gathering (each device its own batch and slices).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from mimreg import distributed as dist
from mimreg.bounds import bounded
from mimreg.numerics import fp32_loss
from mimreg.regularizers.base import Regularizer, register, require_features
from mimreg.slices import SliceSteps

# a slice seed per (call, process): far apart so that two processes never share a call's seed
_RANK_STRIDE = 1_000_003


def _biased_std(z: torch.Tensor) -> torch.Tensor:
    return z.std(dim=0, unbiased=False)


@fp32_loss
def visreg_center_loss(z: torch.Tensor) -> torch.Tensor:
    """VISReg Eq. 6: the mean over dimensions of the squared batch mean. z: (n, d); returns a scalar."""
    return z.mean(dim=0).square().mean()


@fp32_loss
def visreg_scale_loss(z: torch.Tensor) -> torch.Tensor:
    """VISReg Eq. 1: the mean over dimensions of (1 - std)^2, std the biased batch standard
    deviation of each dimension. z: (n, d), n >= 2; returns a scalar."""
    return (1.0 - _biased_std(z)).square().mean()


def gaussian_quantiles(n: int, device, dtype) -> torch.Tensor:
    """(n,) standard-normal quantiles at i / (n + 1), i = 1..n (finite for every n), from fp32 as lightly."""
    positions = torch.arange(1, n + 1, device=device, dtype=torch.float32) / (n + 1)
    return torch.special.ndtri(positions).to(dtype)


@fp32_loss
def visreg_shape_loss(z: torch.Tensor, slices: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """VISReg Eq. 5 (sliced 2-Wasserstein to N(0, I)) on z standardised with a stop-gradient std (Eq. 2).

    z: (n, d), n >= 2; slices: (d, m) unit columns. The sorted projections (z - mean) / (sg(std) + eps)
    @ slices are compared with the Gaussian quantiles at i / (n + 1): the mean squared difference
    over the n x m entries. fp32 inside (fp64 stays fp64); returns a scalar.
    """
    standard = (z - z.mean(dim=0)) / (_biased_std(z).detach() + eps)
    projections = (standard @ slices.to(standard.dtype)).sort(dim=0).values
    quantiles = gaussian_quantiles(z.shape[0], z.device, standard.dtype)
    return (projections - quantiles[:, None]).square().mean()



@fp32_loss
def visreg_loss(z: torch.Tensor, slices: torch.Tensor, scale_weight: float = 1.0, shape_weight: float = 1.0,
                center_weight: float = 1.0, eps: float = 1e-4) -> torch.Tensor:
    """VISReg's regularizer (Algorithm 1): scale_weight * Eq. 1 + shape_weight * Eq. 5 + center_weight * Eq. 6.

    z: (n, d) embeddings of one view, n >= 2; slices: (d, m) unit columns. Returns a scalar.
    """
    if z.dim() != 2 or z.shape[0] < 2:
        raise ValueError(f"visreg_loss needs a (n, d) tensor with n >= 2, got shape {tuple(z.shape)}")
    return (scale_weight * visreg_scale_loss(z) + shape_weight * visreg_shape_loss(z, slices, eps)
            + center_weight * visreg_center_loss(z))


@dataclass
class VisregOptions:
    features: list[str] = field(default_factory=lambda: ["cls"])  # one view each; the loss is their mean
    slices: int = bounded(4096, ge=1)  # lightly's num_slices
    scale_weight: float = bounded(1.0, ge=0)  # lightly's lambda_scale
    shape_weight: float = bounded(1.0, ge=0)  # lambda_shape
    center_weight: float = bounded(1.0, ge=0)  # lambda_center
    eps: float = bounded(1e-4, gt=0)  # added to the std before standardising
    seed: int = bounded(0, ge=0)  # of the slices: call k draws with seed + k (+ a stride per process when local)


@register
class Visreg(Regularizer):
    """VISReg's centre + scale + shape terms on each listed feature, averaged over the features.

    Slices are fresh at every call (call k of this module draws with seed + k), as lightly draws
    them from the global generator at every call. Without gather (the official default), each
    process also offsets the seed by its rank: its own slices on its own batch, as in the paper
    (Section 3.2: the effective number of slices grows with the world size). With gather, every
    process draws the same slices for the global batch, so 2 processes compute what 1 does.
    """

    name = "visreg"
    paper = "VISReg (Wu et al. 2026, arXiv 2606.02572), Eq. 1, 5, 6 (lightly's VISRegLoss)"
    summary = "push the features toward N(0, I): centre, per-dimension std 1, sliced-W2 shape"
    Options = VisregOptions
    # lightly's total is (1 - lambda) * prediction + lambda * reg with lambda 0.9: the reg term is
    # weighted 0.9 / 0.1 = 9 relative to the method's own loss
    default_weight = 9.0
    default_gather = False  # lightly's gather_distributed=False, the paper's per-device setting

    def __init__(self, options: VisregOptions, **kwargs):
        super().__init__(options, **kwargs)
        self.slice_steps = SliceSteps()  # call k's slices: seed + k (+ the rank's stride when local)

    @classmethod
    def check_options(cls, options: VisregOptions, key: str) -> None:
        super().check_options(options, key)
        require_features(options.features, key)

    def reads(self) -> tuple[str, ...]:
        return tuple(self.options.features)

    def loss(self, *features: torch.Tensor) -> torch.Tensor:
        o = self.options
        first = features[0]
        dtype = torch.float64 if first.dtype == torch.float64 else torch.float32
        offset = o.seed + (0 if self.gather else dist.rank() * _RANK_STRIDE)
        slices = self.slice_steps.draw(first.shape[1], o.slices, first.device, offset, dtype)
        terms = [visreg_loss(f, slices, o.scale_weight, o.shape_weight, o.center_weight, o.eps) for f in features]
        return torch.stack(terms).mean()
