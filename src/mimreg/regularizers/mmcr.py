"""MMCR: maximum manifold capacity, the nuclear norm of the views' centroid matrix."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from mimreg.bounds import bounded
from mimreg.errors import ConfigError
from mimreg.numerics import fp32_loss
from mimreg.regularizers.base import Regularizer, register


@fp32_loss
def mmcr_loss(*views: torch.Tensor, local_weight: float = 0.0, normalize: bool = True,
              eps: float = 1e-12) -> torch.Tensor:
    """MMCR (Yerxa et al., NeurIPS 2023; official code form, mmcr/*/loss_mmcr.py):
    -||C||_* + local_weight * (1/B) sum_b ||Z_b||_*, C the (B, D) means of the views, Z_b the (V, D) views of image b.

    views: V >= 2 tensors (B, D), row b of each the same image; each row divided by max(||z||, eps)
    with `normalize` (the official code's F.normalize; lightly's MMCRLoss skips it). fp32 inside
    (fp64 stays fp64). Returns a scalar: the global nuclear norm is a sum, not a batch mean.
    """
    if len(views) < 2:
        raise ValueError(f"mmcr_loss needs at least 2 views of each image, got {len(views)}")
    if any(v.dim() != 2 or v.shape != views[0].shape for v in views):
        raise ValueError(f"mmcr_loss needs views of one (B, D) shape, got {[tuple(v.shape) for v in views]}")
    z = torch.stack(views, dim=1)  # (B, V, D)
    z = z if z.dtype == torch.float64 else z.float()
    if normalize:
        z = z / z.norm(dim=2, keepdim=True).clamp_min(eps)
    loss = -torch.linalg.svdvals(z.mean(dim=1)).sum()
    if local_weight:  # skipped at 0 as the official code does: B small SVDs saved
        loss = loss + local_weight * torch.linalg.svdvals(z).sum() / z.shape[0]
    return loss


@dataclass
class MmcrOptions:
    features: list[str] = field(default_factory=lambda: ["emb.0", "emb.1"])  # the views, row-aligned
    # lambda of the local term: 0 in both official training scripts (pretrain_imagenet.py,
    # pretrain_cifar_stl.py); lightly's MMCRLoss defaults to 5e-3
    local_weight: float = bounded(0.0, ge=0)
    normalize: bool = True  # L2-normalise each embedding first: the official code; lightly's does not
    eps: float = bounded(1e-12, gt=0)  # F.normalize's


@register
class Mmcr(Regularizer):
    """MMCR on the listed per-view features (at least 2: the joint methods' emb.0, emb.1).

    The official code gathers the batch of all GPUs (`distributed` whenever there are several), so
    `gather` is true by default; its all_gather passes no gradient to the other GPUs' rows, which
    with DDP's averaging divides the gradient by the number of GPUs. Here the gradient is exact.
    """

    name = "mmcr"
    paper = "MMCR (Yerxa et al., NeurIPS 2023), official code form"
    summary = "maximise the nuclear norm of the per-image centroids of the L2-normalised views"
    Options = MmcrOptions
    default_weight = 1.0  # the official objective is this loss alone

    @classmethod
    def check_options(cls, options: MmcrOptions, key: str) -> None:
        super().check_options(options, key)
        if len(options.features) < 2:
            raise ConfigError(f"{key}.features needs the features of at least 2 views of each image, e.g. "
                              f"[emb.0, emb.1] (a joint-embedding method), got {options.features}")

    def reads(self) -> tuple[str, ...]:
        return tuple(self.options.features)

    def loss(self, *views: torch.Tensor) -> torch.Tensor:
        o = self.options
        return mmcr_loss(*views, local_weight=o.local_weight, normalize=o.normalize, eps=o.eps)
