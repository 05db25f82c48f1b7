"""MI-MAE's l_min: the CLUB upper bound of I(x; z) between encoder input and output tokens."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from mimreg.bounds import bounded, one_of
from mimreg.errors import ConfigError
from mimreg.regularizers.base import Regularizer, register
from mimreg.numerics import fp32_loss

VARIANCE_MODES = ("variance", "log_variance")


def _fp32(*tensors: torch.Tensor) -> list[torch.Tensor]:
    dtype = torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
    return [t.to(dtype) for t in tensors]


def _check(mu: torch.Tensor, var: torch.Tensor, z: torch.Tensor, who: str) -> None:
    if mu.dim() != 2 or mu.shape != var.shape or mu.shape != z.shape:
        raise ValueError(f"{who} needs mu, var and z of the same (n, D) shape, got "
                         f"{tuple(mu.shape)}, {tuple(var.shape)} and {tuple(z.shape)}")


@fp32_loss
def club_sample_bound(mu: torch.Tensor, var: torch.Tensor, z: torch.Tensor, perm: torch.Tensor,
                      eps: float = 1e-6) -> torch.Tensor:
    """CLUB (Cheng et al., ICML 2020) sampled estimator, as MI-MAE's l_min (Eq. 10; spec §5.2(b)).

    mu, var: (n, D) mean and variance of q(z|x_i); z: (n, D) the paired samples; perm: (n,) a
    permutation giving each row one negative z[perm[i]]. Returns the scalar
    mean_i sum_d [ -(mu - z_i)^2 / (2 var) + (mu - z_perm(i))^2 / (2 var) ].
    Computed in fp32 (fp64 stays fp64); var is clamped to >= eps. Nothing is detached here.
    """
    _check(mu, var, z, "club_sample_bound")
    if perm.shape != (z.shape[0],):
        raise ValueError(f"club_sample_bound needs a permutation of the {z.shape[0]} rows, got shape {tuple(perm.shape)}")
    mu, var, z = _fp32(mu, var, z)
    var = var.clamp_min(eps)
    positive = -(mu - z).pow(2) / (2 * var)
    negative = -(mu - z[perm]).pow(2) / (2 * var)
    return (positive - negative).sum(dim=1).mean()


@fp32_loss
def club_nll(mu: torch.Tensor, var: torch.Tensor, z: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """CLUB's learning loss for q (MI-MAE Eq. 9, spec §5.2(b)): Gaussian NLL up to constants.

    mu, var, z: (n, D). Returns mean_i sum_d [ (mu - z)^2 / var + log var ] (twice the NLL minus
    n*D*log(2 pi), as in CLUB's code). fp32 inside; var clamped to >= eps.
    """
    _check(mu, var, z, "club_nll")
    mu, var, z = _fp32(mu, var, z)
    var = var.clamp_min(eps)
    return ((mu - z).pow(2) / var + torch.log(var)).sum(dim=1).mean()


class GaussianPosterior(nn.Module):
    """q(z|x) = N(mu(x), diag var(x)), MI-MAE §5.4 read literally (spec §5.1).

    mu: Linear(D, H) -> GELU -> Linear(H, H) -> Linear(H, D) -> LeakyReLU.
    var: the same layers ending in ReLU. The paper does not say what the ReLU output is
    ([UNKNOWN] in spec §5.1). mode "variance" (default): var = ReLU output + var_eps; the last
    bias of this branch starts at 1 so that var starts near 1 rather than at var_eps for the
    half of the units a zero-mean init would leave dead (our init choice; the paper gives none).
    mode "log_variance" (the spec's [ASSUMPTION]): var = exp(ReLU output), i.e. var >= 1.
    Outputs are fp32 whatever the autocast dtype of the layers.
    """

    def __init__(self, dim: int, hidden: int, mode: str = "variance", var_eps: float = 1e-4):
        super().__init__()
        self.mode, self.var_eps = mode, var_eps

        def branch(last: nn.Module) -> nn.Sequential:
            return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, hidden),
                                 nn.Linear(hidden, dim), last)

        self.mean = branch(nn.LeakyReLU())
        self.var = branch(nn.ReLU())
        if mode == "variance":
            nn.init.constant_(self.var[3].bias, 1.0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu = self.mean(x).float()
        out = self.var(x).float()
        var = out + self.var_eps if self.mode == "variance" else torch.exp(out)
        return mu, var


@dataclass
class ClubOptions:
    input_feature: str = "patch_embed"  # visible patch embeddings (+ pos), (B, N_vis, D) [ASSUMPTION]
    output_feature: str = "tokens"  # encoder output at the same positions, after the final norm
    hidden_dim: int | None = bounded(None, ge=1)  # H of q's branches; None = the encoder width D [UNKNOWN in paper]
    variance: str = one_of("variance", *VARIANCE_MODES)  # what q's ReLU branch outputs: "variance" (+ var_eps) or "log_variance"
    var_eps: float = bounded(1e-4, gt=0)


@register
class Club(Regularizer):
    """CLUB upper bound of I(x; z), minimised by the encoder, with its own network q(z|x).

    Gradient routing (spec §5.2(b)): `forward` returns the sampled bound computed with q's
    parameters detached (torch.func.functional_call), so weight * bound reaches the encoder only,
    through x and z. `auxiliary_loss` returns q's NLL on detached (x, z) with live parameters, which
    the Trainee adds unweighted from the first step, before the weight (or gate) switches the bound
    on: q trains at full strength whatever `weight` is, and the NLL never reaches the encoder. (The
    paper trains q "jointly"; fitting q from the start is our choice: the bound of an unfitted q is
    loose, and an encoder told to minimise it drifts away from q instead of losing information.) Each forward of q is run twice (once per
    routing); q is small.

    Rows: every token of every sequence, (B, N, D) flattened to (B*N, D). The negatives are one
    `torch.randperm` of those rows from the default generator of their device (CLUBSample; a row
    may draw itself). Per process: the bound is a mean over local tokens and needs no gather.
    """

    name = "club"
    paper = "MI-MAE (Huang et al., ICLR 2025), Eq. 9-10 (l_min, CLUBSample of Cheng et al. 2020)"
    summary = "minimise the CLUB upper bound of the mutual information between encoder input and output tokens"
    Options = ClubOptions
    default_weight = 10.0  # spec §5.2(c): (l_max, l_min) = (1, 10) most likely [UNVERIFIED ordering]
    batch_wide = False
    aux_while_off = True

    def setup(self, depth: int) -> None:
        if self.embed_dim <= 0:
            raise self.option_error("needs the encoder width (embed_dim) to build its network q(z|x)")
        hidden = self.options.hidden_dim or self.embed_dim
        self.q = GaussianPosterior(self.embed_dim, hidden, self.options.variance, self.options.var_eps)

    def reads(self) -> tuple[str, ...]:
        return (self.options.input_feature, self.options.output_feature)

    def pairs(self, features: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, z) as (B*N, D) rows, checked."""
        x, z = (features[name] for name in self.reads())
        if x.shape != z.shape or x.shape[-1] != self.embed_dim:
            raise ConfigError(f"regularizer {self.name!r} needs {self.reads()} of the same shape (..., "
                              f"{self.embed_dim}), got {tuple(x.shape)} and {tuple(z.shape)}")
        x, z = x.reshape(-1, self.embed_dim), z.reshape(-1, self.embed_dim)
        if x.shape[0] < 2:
            raise ConfigError(f"regularizer {self.name!r} needs at least 2 tokens to draw negatives, got {x.shape[0]}")
        return x, z

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        x, z = self.pairs(features)
        frozen = {name: p.detach() for name, p in self.q.named_parameters()}
        mu, var = functional_call(self.q, frozen, (x,))
        perm = torch.randperm(x.shape[0], device=x.device)
        return club_sample_bound(mu, var, z, perm)

    def loss(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.forward({self.options.input_feature: x, self.options.output_feature: z})

    def auxiliary_loss(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        x, z = self.pairs(features)
        mu, var = self.q(x.detach())
        return club_nll(mu, var, z.detach())
