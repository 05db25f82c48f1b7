"""Reconstructions of a masked image model: original | masked input | prediction | pasted."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mimreg.analysis._plotting import image_grid, save_png
from mimreg.analysis.inputs import Images
from mimreg.methods import Method
from mimreg.models import unpatchify

ROWS = ("original", "masked input", "prediction", "prediction\n+ visible")


@dataclass
class Reconstruction:
    """Each (B, 3, H, W) in the encoder's normalised input space; masked patches of `masked`
    hold NaN (drawn grey). `pasted` is the input where visible and the prediction elsewhere."""

    original: torch.Tensor
    masked: torch.Tensor
    prediction: torch.Tensor
    pasted: torch.Tensor

    def panels(self) -> list[torch.Tensor]:
        return [self.original, self.masked, self.prediction, self.pasted]


def unnormalise_patches(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Map a norm-pix prediction back to pixels with each ORIGINAL patch's own mean and std
    (the inverse of the target standardisation of MAE's loss). pred, target: (B, L, p*p*3)."""
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    return pred * torch.sqrt(var + eps) + mean


@torch.no_grad()
def reconstruct(method: Method, images: torch.Tensor, generator: torch.Generator | None = None) -> Reconstruction:
    """One masked forward pass of `method` on images (B, 3, H, W); K-view methods (MI-MAE)
    show their first view. The prediction is the method's own (`Method.predict`)."""
    out = method.predict(images, generator=generator)
    batch, p = images.shape[0], method.encoder.patch_size
    # at least fp32 (a bf16/fp16 prediction is widened; a float64 one stays float64)
    dtype = torch.promote_types(out.pred.dtype, torch.float32)
    pred, target, removed = (x[:batch].to(dtype) for x in (out.pred, out.target, out.removed))
    if out.norm_pix:
        pred = unnormalise_patches(pred, target)
    keep = (removed == 0).unsqueeze(-1)
    masked = torch.where(keep, target, torch.full_like(target, float("nan")))
    pasted = torch.where(keep, target, pred)
    return Reconstruction(*(unpatchify(x, p) for x in (target, masked, pred, pasted)))


def plot_reconstructions(method: Method, images: Images, path, seed: int = 0, title: str | None = None):
    """PNG: one column per image, rows original | masked input | prediction | prediction pasted
    into the visible patches. The mask is drawn from `seed`."""
    generator = torch.Generator(device=images.images.device).manual_seed(seed)
    result = reconstruct(method, images.images, generator)
    rows = [list(images.pixels(panel)) for panel in result.panels()]
    figure = image_grid(rows, ROWS, title=title)
    return save_png(figure, path)
