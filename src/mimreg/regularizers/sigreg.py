"""SIGReg (LeJEPA): the sliced Epps-Pulley statistic of embeddings against an isotropic Gaussian."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from mimreg.bounds import bounded
from mimreg.distributed import all_reduce_sum_with_grad
from mimreg.errors import ConfigError
from mimreg.numerics import fp32_loss
from mimreg.regularizers.base import Regularizer, register


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

    The slices of call k are seeded with k (as the official `global_step` seed), counted in the
    `slice_step` buffer so a resumed run draws what the uninterrupted one would. A Python mirror
    of it seeds the generator, so no call reads the device (no host sync). With gather (the
    default) the sums of cos and sin and the count are summed over processes by a
    gradient-carrying all-reduce: the statistic and its gradient are those of the global batch.
    """

    name = "sigreg"
    paper = "LeJEPA (Balestriero & LeCun, 2025), Eq. 11-12 (SIGReg, Epps-Pulley)"
    summary = "push each view's embeddings towards an isotropic standard Gaussian along random slices"
    Options = SigregOptions
    default_weight = 0.05  # LeJEPA's lambda (lightly's LeJEPALoss default)
    min_batch = 1  # the statistic is defined for any N (the config still asks for batch_size >= 2)

    def setup(self, depth: int) -> None:
        self.register_buffer("slice_step", torch.zeros((), dtype=torch.long))
        self._next_step: int | None = None  # mirror of slice_step; None: read it at the next call

    @classmethod
    def check_options(cls, options: SigregOptions, key: str) -> None:
        super().check_options(options, key)
        if not options.features:
            raise ConfigError(f"{key}.features must name at least one feature, e.g. [emb.0, emb.1]")

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._next_step = None  # a checkpoint's count: read once at the next call

    def reads(self) -> tuple[str, ...]:
        return tuple(self.options.features)

    @torch.compiler.disable  # a Python counter and a seeded generator: eager, never a recompilation
    def directions(self, dim: int, device: torch.device) -> torch.Tensor:
        if self._next_step is None:
            self._next_step = int(self.slice_step)  # once per start or resume
        step, self._next_step = self._next_step, self._next_step + 1
        self.slice_step.fill_(step + 1)
        return sigreg_directions(dim, self.options.slices, step, device)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        views = torch.stack([features[name] for name in self.reads()])
        return self.loss(views)

    def loss(self, views: torch.Tensor) -> torch.Tensor:
        o = self.options
        reduce = all_reduce_sum_with_grad if self.gather else None
        return sigreg_loss(views, self.directions(views.shape[-1], views.device), o.knots, o.t_max, reduce)
