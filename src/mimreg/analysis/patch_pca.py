"""The patch features seen as colour: their first three principal components as RGB."""

from __future__ import annotations

import numpy as np
import torch

from mimreg.analysis._plotting import image_grid, save_png
from mimreg.analysis.inputs import Images
from mimreg.models import ViTEncoder


def pca_rgb(tokens: torch.Tensor) -> torch.Tensor:
    """tokens (B, L, D) -> (B, L, 3) in [0, 1]: the projections on the first three principal
    components of all B*L patch features together (one basis for every image, so colours
    compare across images), each min-max scaled to [0, 1]. Components beyond the rank are 0."""
    batch, length, dim = tokens.shape
    x = tokens.reshape(batch * length, dim).double()
    x = x - x.mean(dim=0, keepdim=True)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    # a component's sign is arbitrary: orient it so its largest projection is positive (stable colours)
    proj = x @ vh[:3].T
    flip = proj.gather(0, proj.abs().argmax(dim=0, keepdim=True)).sign()
    proj = proj * torch.where(flip == 0, torch.ones_like(flip), flip)
    low, high = proj.min(dim=0).values, proj.max(dim=0).values
    scaled = (proj - low) / (high - low).clamp_min(1e-12)
    rgb = torch.zeros(batch * length, 3, dtype=torch.float64)
    rgb[:, : scaled.shape[1]] = scaled
    return rgb.reshape(batch, length, 3).float()


@torch.no_grad()
def patch_pca_images(encoder: ViTEncoder, images: torch.Tensor) -> np.ndarray:
    """(B, H, W, 3) pictures of the PCA colours of the final patch features of unmasked images,
    each patch one uniform p x p block at its place in the image."""
    tokens = encoder.forward_masked(images, None).tokens.float().cpu()
    g, p = encoder.grid_size, encoder.patch_size
    rgb = pca_rgb(tokens).reshape(-1, g, g, 3).numpy()
    return np.kron(rgb, np.ones((1, p, p, 1)))


def plot_patch_pca(encoder: ViTEncoder, images: Images, path, title: str | None = None):
    """PNG: per image (column), the image and the first three principal components of its patch
    features as RGB (one PCA basis over all the images shown)."""
    rows = [list(images.pixels()), list(patch_pca_images(encoder, images.images))]
    return save_png(image_grid(rows, ["image", "patch PCA\n(RGB)"], title=title), path)
