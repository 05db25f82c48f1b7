"""SIGReg's statistic (LeJEPA): the sliced Epps-Pulley test of embeddings against an isotropic
Gaussian, and the step-seeded slices (kept below both the `sigreg` regularizer and the `lejepa`
method, which each use it)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

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


def sigreg_directions(dim: int, slices: int, seed: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(dim, slices) random unit columns drawn from a generator seeded with `seed` alone (not the
    global RNG): every process that passes the same seed draws the same slices. Drawn in fp32
    whatever `dtype`, so a run's slices do not depend on its precision."""
    generator = torch.Generator(device=device).manual_seed(seed)
    a = torch.randn(dim, slices, generator=generator, device=device, dtype=torch.float32)
    return (a / a.norm(dim=0, keepdim=True)).to(dtype)


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


class SliceSteps(nn.Module):
    """The seed of each call's slices: 0, 1, 2, ... (the official `global_step` seed), counted in
    the `step` buffer so that a resumed run draws what the uninterrupted one would. A Python
    mirror of it seeds the generator, so no call reads the device (no host sync) but the first
    after a start or a checkpoint load. Every process calls in step, so all draw the same slices."""

    def __init__(self):
        super().__init__()
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self._next: int | None = None  # None: read `step` at the next call

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._next = None

    @torch.compiler.disable  # a Python counter and a seeded generator: eager, never a recompilation
    def draw(self, dim: int, slices: int, device: torch.device) -> torch.Tensor:
        """(dim, slices) unit slices of this call; the next call draws other ones."""
        if self._next is None:
            self._next = int(self.step)
        seed, self._next = self._next, self._next + 1
        self.step.fill_(self._next)
        return sigreg_directions(dim, slices, seed, device)
