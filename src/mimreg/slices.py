"""Random unit directions for sliced statistics (SIGReg, VISReg), seeded by the call's number so that
every process draws the same ones and a resumed run draws what the uninterrupted one would."""

from __future__ import annotations

import torch
from torch import nn


def unit_slices(dim: int, slices: int, seed: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(dim, slices) random unit columns drawn from a generator seeded with `seed` alone (not the
    global RNG): every process that passes the same seed draws the same slices. Drawn in fp32
    whatever `dtype`, so a run's slices do not depend on its precision."""
    generator = torch.Generator(device=device).manual_seed(seed)
    a = torch.randn(dim, slices, generator=generator, device=device, dtype=torch.float32)
    return (a / a.norm(dim=0, keepdim=True)).to(dtype)


class SliceSteps(nn.Module):
    """The seed of each call's slices: 0, 1, 2, ... (the official `global_step` seed), counted in
    the `step` buffer so that a resumed run draws what the uninterrupted one would. A Python
    mirror of it seeds the generator, so no call reads the device (no host sync) but the first
    after a start or a checkpoint load. Every process calls in step, so all draw the same slices (at the same offset)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self._next: int | None = None  # None: read `step` at the next call

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._next = None

    @torch.compiler.disable  # a Python counter and a seeded generator: eager, never a recompilation
    def draw(self, dim: int, slices: int, device: torch.device, offset: int = 0,
             dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(dim, slices) unit slices of this call, seeded with offset + the call's number; the next
        call draws other ones."""
        if self._next is None:
            self._next = int(self.step)
        seed, self._next = self._next, self._next + 1
        self.step.fill_(self._next)
        return unit_slices(dim, slices, offset + seed, device, dtype)
