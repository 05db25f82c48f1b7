"""Reconstruction pictures: honest un-normalisation of norm-pix predictions, masks, K views."""

import pytest
import torch

from mimreg.analysis.inputs import Images
from mimreg.analysis.reconstruction import plot_reconstructions, reconstruct, unnormalise_patches
from mimreg.errors import MimregError
from mimreg.methods import MAE, SimCLR, SimMIM
from mimreg.methods.mae import MAEOptions, reconstruction_loss
from mimreg.methods.simclr import SimCLROptions
from mimreg.methods.simmim import SimMIMOptions
from mimreg.models import ViTEncoder, patchify, unpatchify

pytestmark = pytest.mark.usefixtures("single_thread")


def standardised(target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """MAE's norm-pix target: each patch minus its mean over its unbiased std (eps inside the sqrt)."""
    return (target - target.mean(-1, keepdim=True)) / torch.sqrt(target.var(-1, keepdim=True) + eps)


class PerfectMAE(MAE):
    """A MAE whose decoder output is replaced by the exact answer its loss asks for: with
    norm_pix_loss the standardised target patch, else the target itself (loss 0)."""

    def predict(self, images, **kwargs):
        out = super().predict(images, **kwargs)
        out.pred = standardised(out.target) if out.norm_pix else out.target.clone()
        return out


def make(cls, num_masks=1, norm_pix=True):
    torch.manual_seed(0)
    options = MAEOptions(decoder_dim=32, decoder_depth=1, decoder_heads=2, num_masks=num_masks,
                         norm_pix_loss=norm_pix)
    return cls(ViTEncoder("vit_micro", 32, 4), options).double().eval()


def images(batch=3) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


@pytest.mark.parametrize("norm_pix", [True, False])
def test_a_perfect_reconstruction_equals_the_input_everywhere(norm_pix):
    method, x = make(PerfectMAE, norm_pix=norm_pix), images()
    out = method.predict(x, generator=torch.Generator().manual_seed(2))
    assert float(reconstruction_loss(out.pred, out.target, out.removed, norm_pix)) < 1e-20  # it is perfect
    picture = reconstruct(method, x, torch.Generator().manual_seed(2))
    # mapped back with each original patch's own mean and std, the prediction is the image itself
    torch.testing.assert_close(picture.prediction, x, rtol=0, atol=1e-10)
    torch.testing.assert_close(picture.pasted, x, rtol=0, atol=1e-10)
    assert torch.equal(picture.original, x)


def test_masked_input_hides_exactly_the_masked_patches_and_pasted_keeps_the_visible_ones():
    method, x = make(MAE), images()
    out = method.predict(x, generator=torch.Generator().manual_seed(2))
    picture = reconstruct(method, x, torch.Generator().manual_seed(2))
    hidden = torch.isnan(patchify(picture.masked, 4)).all(dim=-1)
    assert torch.equal(hidden, out.removed.bool())
    assert hidden.float().mean().item() == pytest.approx(0.75)
    visible = ~out.removed.bool()
    assert torch.equal(patchify(picture.masked, 4)[visible], patchify(x, 4)[visible])
    assert torch.equal(patchify(picture.pasted, 4)[visible], patchify(x, 4)[visible])
    # where masked, pasted shows the prediction, un-normalised with the original patch's mean and std
    expected = unpatchify(unnormalise_patches(out.pred, out.target), 4)
    torch.testing.assert_close(picture.prediction, expected, rtol=0, atol=1e-12)
    assert torch.equal(patchify(picture.pasted, 4)[~visible], patchify(expected, 4)[~visible])
    assert not torch.allclose(picture.prediction, x)  # an untrained decoder is not the identity


def test_mi_mae_shows_its_first_view_and_simmim_its_raw_pixels():
    x = images(2)
    mi = make(PerfectMAE, num_masks=4)
    picture = reconstruct(mi, x, torch.Generator().manual_seed(3))
    out = mi.predict(x, generator=torch.Generator().manual_seed(3))
    assert picture.masked.shape == x.shape
    assert torch.equal(torch.isnan(patchify(picture.masked, 4)).all(-1), out.removed[:2].bool())  # view 0
    torch.testing.assert_close(picture.prediction, x, rtol=0, atol=1e-10)

    torch.manual_seed(0)
    simmim = SimMIM(ViTEncoder("vit_micro", 32, 4), SimMIMOptions()).double().eval()
    picture = reconstruct(simmim, x, torch.Generator().manual_seed(3))
    out = simmim.predict(x, generator=torch.Generator().manual_seed(3))
    assert not out.norm_pix
    assert torch.equal(picture.prediction, unpatchify(out.pred, 4))  # L1 on pixels: nothing to undo


def test_predict_gives_the_forward_loss():
    method, x = make(MAE), images()
    noise = torch.rand(3, 64, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    out = method.predict(x, noise=noise)
    loss = method(x, noise=noise).losses["rec"]
    assert torch.equal(reconstruction_loss(out.pred, out.target, out.removed, True), loss)


def test_methods_without_pixels_say_so():
    method = SimCLR(ViTEncoder("vit_micro", 32, 4), SimCLROptions())
    with pytest.raises(MimregError, match="does not reconstruct pixels"):
        method.predict(torch.zeros(1, 3, 32, 32))


def test_picture_has_four_rows_of_the_images(tmp_path, monkeypatch):
    import numpy as np
    from PIL import Image

    from mimreg.analysis import reconstruction
    from mimreg.analysis._plotting import DPI

    drawn = {}
    draw = reconstruction.image_grid

    def image_grid(rows, labels, **options):
        drawn.update(rows=[np.stack(row) for row in rows], labels=list(labels))
        return draw(rows, labels, **options)

    monkeypatch.setattr(reconstruction, "image_grid", image_grid)
    method, x = make(MAE), images(4).float()
    shown = Images(x, torch.zeros(4, dtype=torch.long), torch.full((3,), 0.5), torch.full((3,), 0.25), ["a"])
    path = plot_reconstructions(method.float(), shown, tmp_path / "rec.png")
    assert drawn["labels"] == ["original", "masked input", "prediction", "prediction\n+ visible"]
    original, masked, prediction, pasted = drawn["rows"]
    assert original.shape == masked.shape == prediction.shape == pasted.shape == (4, 32, 32, 3)
    np.testing.assert_allclose(original, shown.pixels(), atol=1e-6)  # the images themselves, un-normalised
    hidden = (masked == 0.5).all(-1)  # grey where the mask hides the patch
    assert hidden.mean() == pytest.approx(0.75)  # MAE's mask ratio
    np.testing.assert_allclose(masked[~hidden], original[~hidden], atol=1e-6)
    np.testing.assert_allclose(pasted[~hidden], original[~hidden], atol=1e-6)  # visible patches as they were
    np.testing.assert_allclose(pasted[hidden], prediction[hidden], atol=1e-6)  # hidden ones predicted
    width, height = Image.open(path).size
    assert height == round((4 * 1.0 + 0.1) * DPI)  # the PNG holds the four one-inch rows
