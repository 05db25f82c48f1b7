"""SIGReg's statistic (LeJEPA): the sliced Epps-Pulley test of embeddings against an isotropic
Gaussian (kept below both the `sigreg` regularizer and the `lejepa` method, which each use it)."""

from __future__ import annotations

from typing import Callable

import torch

from mimreg.numerics import fp32_loss


def epps_pulley_quadrature(knots: int, t_max: float, dtype=torch.float32, device=None):
    """Knots t (T,) on [0, t_max], phi(t) = exp(-t^2/2), and the weights of the integral over
    [-t_max, t_max] against w(t) = phi(t): the trapezoid rule on [0, t_max] doubled (the
    integrand is even), i.e. dt at both ends and 2 dt inside, times phi (lejepa
    univariate/epps_pulley.py and MINIMAL.md: 17 knots, t_max 3)."""
    t = torch.linspace(0, t_max, knots, dtype=dtype, device=device)
    dt = t_max / (knots - 1)
    trapezoid = torch.full_like(t, 2 * dt)
    trapezoid[0] = trapezoid[-1] = dt
    phi = torch.exp(-0.5 * t * t)
    return t, phi, trapezoid * phi



@fp32_loss
def sigreg_loss(z: torch.Tensor, directions: torch.Tensor, knots: int = 17, t_max: float = 3.0,
                reduce_sums: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """LeJEPA Eq. 11-12 (official code form): N * integral of |ECF(t) - exp(-t^2/2)|^2 exp(-t^2/2) dt
    of each slice z @ a of each view, averaged over views and slices.

    z: (V, N, D) per-view embeddings (or (N, D), one view); directions: (D, M) unit columns.
    fp32 (fp64 stays fp64). `reduce_sums` (e.g. a gradient-carrying all-reduce sum) maps the
    packed per-process sums of cos, sin and the count to their global values, so that the ECF and
    N are those of the global batch. Returns a scalar.
    """
    views = z.unsqueeze(0) if z.dim() == 2 else z
    t, phi, weights = epps_pulley_quadrature(knots, t_max, views.dtype, views.device)
    xt = (views @ directions.to(views.dtype)).unsqueeze(-1) * t  # (V, N, M, T)
    sums = torch.stack([xt.cos().sum(dim=1), xt.sin().sum(dim=1)])  # (2, V, M, T)
    count = torch.full((1,), views.shape[1], dtype=views.dtype, device=views.device)
    if reduce_sums is not None:
        packed = reduce_sums(torch.cat([sums.flatten(), count]))
        sums, count = packed[:-1].view_as(sums), packed[-1:]
    cos_mean, sin_mean = sums / count
    err = (cos_mean - phi).square() + sin_mean.square()  # (V, M, T)
    return ((err @ weights) * count).mean()
