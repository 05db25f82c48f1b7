"""MI-MAE's l_max: InfoNCE among the K masked views of each image (mask-invariant information)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mimreg.bounds import bounded
from mimreg.distributed import gather_with_grad
from mimreg.errors import ConfigError
from mimreg.regularizers.base import Regularizer, register
from mimreg.numerics import fp32_loss


@fp32_loss
def mask_infonce_loss(latents: torch.Tensor, num_views: int, temperature: float = 0.1,
                      eps: float = 1e-12) -> torch.Tensor:
    """MI-MAE (Huang et al., ICLR 2025) Eq. 7-8 as reconstructed in spec §5.2(a): InfoNCE across masks.

    latents: (N*K, D) in view-major order, row k*N + i = image i under mask k (the K views
    concatenated along the batch: torch.cat([view_0, ..., view_{K-1}])). Returns a scalar.

    u = latent / ||latent|| (eps-guarded, so zero vectors give similarity 0), logits = u u^T / T.
    For anchor a = (i, k) and each positive b = (i, k'), k' != k, the term is
    -(logit_ab - logsumexp_{c != a} logit_ac): the anchor itself is left out of the denominator,
    the other K-1 views of the same image and all (N-1)*K views of other images stay in. The loss is
    the mean over all N*K anchors and their K-1 positives (one term per positive pair, spec
    §5.2(a) [ASSUMPTION]). Computed in fp32 (fp64 stays fp64).
    """
    if num_views < 2:
        raise ValueError(f"mask_infonce_loss needs num_views K >= 2 (positives are other views), got {num_views}")
    if temperature <= 0:
        raise ValueError(f"mask_infonce_loss needs a positive temperature, got {temperature}")
    if latents.dim() != 2 or latents.shape[0] == 0 or latents.shape[0] % num_views != 0:
        raise ValueError(f"mask_infonce_loss needs (N*K, D) latents with a row count divisible by "
                         f"K={num_views}, got shape {tuple(latents.shape)}")
    rows = latents.shape[0]
    images = rows // num_views
    u = latents.float() if latents.dtype != torch.float64 else latents
    u = u * torch.rsqrt((u * u).sum(dim=1, keepdim=True).clamp_min(eps * eps))
    logits = (u @ u.T) / temperature
    self_mask = torch.eye(rows, dtype=torch.bool, device=logits.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_norm = torch.logsumexp(logits, dim=1, keepdim=True)  # over c != a
    image = torch.arange(rows, device=logits.device) % images
    positive = (image[:, None] == image[None, :]) & ~self_mask  # exactly K-1 per row
    positive_logits = logits[positive].view(rows, num_views - 1)
    return -(positive_logits - log_norm).mean()


def view_major_to_image_major(x: torch.Tensor, num_views: int) -> torch.Tensor:
    """(K*N, D) rows k*N + i -> (N*K, D) rows i*K + k, so that a split by images keeps whole images."""
    return x.reshape(num_views, x.shape[0] // num_views, -1).transpose(0, 1).reshape(x.shape[0], -1)


def image_major_to_view_major(x: torch.Tensor, num_views: int) -> torch.Tensor:
    """Inverse of `view_major_to_image_major`."""
    return x.reshape(x.shape[0] // num_views, num_views, -1).transpose(0, 1).reshape(x.shape[0], -1)


@dataclass
class InfoNCEMasksOptions:
    feature: str = "cls"  # cls token after the final norm [ASSUMPTION, spec §5.2(a)]; "mean" to ablate
    num_views: int = bounded(4, ge=2)  # K masks per image; the feature must hold K*N rows in view-major order
    temperature: float = bounded(0.1, gt=0)  # stripped in the paper text [UNKNOWN]; 0.1 per spec


@register
class InfoNCEMasks(Regularizer):
    """InfoNCE across the K masked views of each image.

    The feature arrives view-major per process. A plain gather would interleave processes inside
    each view block (rank 0's [v0; v1; ...] then rank 1's), so `forward` reorders to image-major
    before `gather_with_grad` (each process contributes whole images, in rank order) and back to
    view-major over the global batch afterwards. Both reorderings are reshapes, so gradients flow.
    """

    name = "infonce_masks"
    paper = "MI-MAE (Huang et al., ICLR 2025), Eq. 7-8 (l_max, reconstructed in spec §5.2(a))"
    summary = "pull together the latents of the K masked views of each image against all other views (InfoNCE)"
    Options = InfoNCEMasksOptions
    default_weight = 1.0

    def reads(self) -> tuple[str, ...]:
        return (self.options.feature,)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        latents = features[self.options.feature]
        views = self.options.num_views
        if latents.dim() != 2 or latents.shape[0] % views != 0:
            raise ConfigError(f"regularizer {self.name!r} needs feature {self.options.feature!r} as "
                              f"(N*K, D) with K={views} views in view-major order, got {tuple(latents.shape)}")
        if self.gather:
            latents = view_major_to_image_major(latents, views)
            latents = gather_with_grad(latents)
            latents = image_major_to_view_major(latents, views)
        images = latents.shape[0] // views
        if images < self.min_batch:
            raise ConfigError(
                f"regularizer {self.name!r} is batch-wide and needs at least {self.min_batch} images "
                f"(x {views} views), got {images}; raise optim.batch_size (or keep gather: true on several processes)"
            )
        return self.loss(latents)

    def loss(self, latents: torch.Tensor) -> torch.Tensor:
        return mask_infonce_loss(latents, self.options.num_views, self.options.temperature)
