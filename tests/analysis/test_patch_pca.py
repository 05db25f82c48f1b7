"""Patch PCA: the principal components of the patch features, one colour block per patch."""

import numpy as np
import pytest
import torch

from mimreg.analysis.patch_pca import patch_pca_images, pca_rgb
from mimreg.models import ViTEncoder

pytestmark = pytest.mark.usefixtures("single_thread")


def test_channels_are_the_first_three_principal_components_scaled_to_unit_range():
    tokens = torch.randn(2, 16, 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    tokens[..., 0] *= 5  # distinct variances: a well-defined order of components
    tokens[..., 1] *= 3
    tokens[..., 2] *= 2
    rgb = pca_rgb(tokens).double().reshape(32, 3).numpy()
    x = tokens.reshape(32, 12).numpy()
    x = x - x.mean(axis=0)
    values, vectors = np.linalg.eigh(x.T @ x)  # the covariance's eigenvectors, ascending
    reference = x @ vectors[:, ::-1][:, :3]
    for c in range(3):
        for sign in (1, -1):
            expected = sign * reference[:, c]
            expected = (expected - expected.min()) / (expected.max() - expected.min())
            if np.allclose(rgb[:, c], expected, atol=1e-6):
                break
        else:
            pytest.fail(f"channel {c} is not principal component {c} (up to sign) scaled to [0, 1]")
        assert rgb[:, c].min() == 0 and rgb[:, c].max() == pytest.approx(1)


def test_rank_below_three_leaves_the_other_channels_black():
    tokens = torch.zeros(1, 4, 5)
    tokens[0, :, 0] = torch.tensor([0.0, 1.0, 2.0, 3.0])
    rgb = pca_rgb(tokens)
    assert torch.allclose(rgb[0, :, 0], torch.tensor([0, 1 / 3, 2 / 3, 1.0])) or \
        torch.allclose(rgb[0, :, 0], torch.tensor([1.0, 2 / 3, 1 / 3, 0]))
    assert torch.equal(rgb[0, :, 1:], torch.zeros(4, 2))


def test_the_picture_has_the_images_patch_grid():
    torch.manual_seed(0)
    encoder = ViTEncoder("vit_micro", 32, 4).eval()
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    pictures = patch_pca_images(encoder, images)
    assert pictures.shape == (2, 32, 32, 3)
    blocks = pictures.reshape(2, 8, 4, 8, 4, 3)
    assert np.array_equal(blocks, np.broadcast_to(blocks[:, :, :1, :, :1], blocks.shape))  # one colour per 4x4 patch
    with torch.no_grad():
        tokens = encoder.forward_masked(images, None).tokens
    expected = pca_rgb(tokens).reshape(2, 8, 8, 3).numpy()
    assert np.array_equal(blocks[:, :, 0, :, 0], expected)  # patch (i, j) shows token i * 8 + j
    assert len(np.unique(expected.reshape(-1, 3), axis=0)) > 100  # patches differ
