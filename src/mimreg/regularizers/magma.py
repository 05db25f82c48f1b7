"""MAGMA: a batch-wide graph-Laplacian loss tying a regularized layer to a reference layer."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mimreg.bounds import bounded, unbounded
from mimreg.regularizers.base import Regularizer, register
from mimreg.numerics import fp32_loss


def pairwise_sq_distances(x: torch.Tensor) -> torch.Tensor:
    """(B, D) -> (B, B) exact squared Euclidean distances (duplicates give exactly 0)."""
    return torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist").pow(2)


def rbf_affinity(reference: torch.Tensor, fixed_gamma: float | None = None,
                 eps: float = 1e-12) -> torch.Tensor:
    """(B, D) -> (B, B) kernel exp(-d_ij / std(d)) with a zero diagonal (MAGMA code, spec §1.2).

    std is the unbiased std of the non-zero squared distances (both triangles), not detached.
    """
    sq = pairwise_sq_distances(reference)
    if fixed_gamma is not None:
        gamma = torch.as_tensor(fixed_gamma, dtype=sq.dtype, device=sq.device)
    else:
        nonzero = (sq != 0).to(sq.dtype)
        count = nonzero.sum()
        mean = (sq * nonzero).sum() / count.clamp_min(1)
        var = ((sq - mean).pow(2) * nonzero).sum() / (count - 1).clamp_min(1)
        gamma = torch.sqrt(var.clamp_min(eps))
    affinity = torch.exp(-sq / gamma)
    return affinity * (1 - torch.eye(sq.shape[0], dtype=sq.dtype, device=sq.device))


@fp32_loss
def magma_loss(reference: torch.Tensor, regularized: torch.Tensor, fixed_gamma: float | None = None,
               degree_eps: float = 1e-4) -> torch.Tensor:
    """MAGMA Eq. 1 as implemented (spec §1.2): trace(Y^T (I - D^-1/2 W D^-1/2) Y) / B^2.

    reference: (B, Dk) features of the reference layer, which build the graph W.
    regularized: (B, Dl) features of the regularized layer Y. Computed in fp32 (fp64 stays fp64);
    nothing is detached. Returns a scalar. Needs B >= 2.
    """
    batch = reference.shape[0]
    if batch < 2 or regularized.shape[0] != batch:
        raise ValueError(f"magma_loss needs two (B, D) inputs with the same B >= 2, got "
                         f"{tuple(reference.shape)} and {tuple(regularized.shape)}")
    dtype = torch.float64 if reference.dtype == torch.float64 else torch.float32
    x, y = reference.to(dtype), regularized.to(dtype)
    affinity = rbf_affinity(x, fixed_gamma)
    inv_sqrt_degree = torch.rsqrt(affinity.sum(dim=1) + degree_eps)
    normalized = inv_sqrt_degree[:, None] * affinity * inv_sqrt_degree[None, :]
    trace = (y * y).sum() - (normalized * (y @ y.T)).sum()
    return trace / batch**2


@dataclass
class MagmaOptions:
    # block indices (negative from the end), checked against the encoder depth when it is built
    reference_blocks: list[int] = unbounded(default_factory=lambda: [-2], why="a block index")  # build the graph; averaged
    regularized_block: int = unbounded(-1, why="a block index")
    fixed_gamma: float | None = bounded(None, gt=0)  # replaces std(d) in the kernel when set


@register
class Magma(Regularizer):
    name = "magma"
    paper = "MAGMA (Dondera et al., WACV 2025), Eq. 1"
    summary = "keep the last block's batch geometry consistent with an earlier block's (RBF Laplacian)"
    Options = MagmaOptions
    default_weight = 1.0

    def setup(self, depth: int) -> None:
        resolve = lambda i: self.resolve_block(i, depth)  # noqa: E731
        self.reference = [resolve(i) for i in self.options.reference_blocks]
        self.regularized = resolve(self.options.regularized_block)
        if not self.reference or self.regularized in self.reference:
            raise self.option_error("reference_blocks must be non-empty and differ from regularized_block")

    def reads(self) -> tuple[str, ...]:
        return (f"block.{self.regularized}", *(f"block.{i}" for i in self.reference))

    def loss(self, regularized: torch.Tensor, *references: torch.Tensor) -> torch.Tensor:
        terms = [magma_loss(ref, regularized, self.options.fixed_gamma) for ref in references]
        return torch.stack(terms).mean()
