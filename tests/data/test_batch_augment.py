"""The batched device augmentation against the PIL path it replaces: the same crops (Pillow's
bicubic within one grey level), the same colour ops, the same parameter distributions, and
parameters that depend only on (seed, epoch, index)."""

import math

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from mimreg.data import colour
from mimreg.data.batch_augment import BatchAugment, crop_and_flip, draw_params
from mimreg.data.keyed_random import keyed_uniforms
from mimreg.data.resample import apply_separable, gaussian_blur_matrix
from mimreg.data.transforms import mae_view, msn_view_specs, simclr_view

pytestmark = pytest.mark.usefixtures("single_thread")


def noise_image(height=40, width=28, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_crops_equal_pillows_bicubic_resized_crop_within_one_grey_level():
    # noise is the hardest case: Pillow clips each pass to 8 bits, so the order of the passes shows
    image = noise_image()
    batch = torch.from_numpy(image).permute(2, 0, 1)[None].expand(64, -1, -1, -1)
    for size in (32, 16):  # enlarging and shrinking crops
        params = draw_params(simclr_view(size), 0, 0, np.arange(64), 0, 40, 28)
        assert params.flip.any() and not params.flip.all()
        out = crop_and_flip(batch, params, size)
        for i in range(64):
            box = [int(v[i]) for v in (params.top, params.left, params.height, params.width)]
            want = TF.resized_crop(Image.fromarray(image), *box, [size, size], T.InterpolationMode.BICUBIC)
            if params.flip[i]:
                want = TF.hflip(want)
            diff = (out[i].round() - torch.from_numpy(np.array(want)).permute(2, 0, 1).float()).abs()
            assert diff.max() <= 1, (i, box, diff.max())


def test_colour_ops_equal_torchvisions_per_sample():
    images = torch.rand(6, 3, 9, 7, generator=torch.Generator().manual_seed(0))
    factors = torch.tensor([0.0, 0.6, 0.9, 1.0, 1.3, 1.4])
    shifts = torch.tensor([-0.5, -0.1, 0.0, 0.05, 0.1, 0.4])
    cases = [(colour.adjust_brightness_, TF.adjust_brightness, factors),
             (colour.adjust_contrast_, TF.adjust_contrast, factors),
             (colour.adjust_saturation_, TF.adjust_saturation, factors),
             (colour.adjust_hue_, TF.adjust_hue, shifts)]
    for ours, theirs, values in cases:
        got = ours(images.clone(), values, 1.0)
        want = torch.stack([theirs(images[i], float(values[i])) for i in range(6)])
        # torchvision's luma weighs red 0.2989, Pillow's (and ours) 0.299
        torch.testing.assert_close(got, want, atol=2e-4, rtol=0)
    grey = colour.to_grayscale(images)
    torch.testing.assert_close(grey, TF.rgb_to_grayscale(images, 3), atol=2e-4, rtol=0)
    sigma = torch.tensor([0.1, 0.7, 2.0])
    blurred = apply_separable(images[:3], gaussian_blur_matrix(sigma, 5, 9)[:, :, :], gaussian_blur_matrix(sigma, 5, 7))
    want = torch.stack([TF.gaussian_blur(images[i], [5, 5], [float(sigma[i])] * 2) for i in range(3)])
    torch.testing.assert_close(blurred, want, atol=1e-5, rtol=0)


def torchvision_params(count: int, height: int, width: int, scale):
    """(area fraction, aspect ratio) of `count` draws of torchvision's RandomResizedCrop."""
    torch.manual_seed(0)
    image = torch.zeros(3, height, width)
    boxes = [T.RandomResizedCrop.get_params(image, list(scale), [3 / 4, 4 / 3]) for _ in range(count)]
    h, w = np.array([b[2] for b in boxes]), np.array([b[3] for b in boxes])
    return h * w / (height * width), w / h


def test_parameter_distributions_match_torchvision():
    n = 6000
    for spec, (height, width) in [(simclr_view(32), (32, 32)), (msn_view_specs(32, 1, 12)[-1], (32, 32)),
                                  (mae_view(24), (20, 60))]:  # a wide image: the ratio clips the crops
        p = draw_params(spec, 3, 1, np.arange(n), 0, height, width)
        ours = (p.height * p.width / (height * width), p.width / p.height)
        theirs = torchvision_params(n, height, width, spec.crop_scale)
        for a, b in zip(ours, theirs):  # quantiles of the area fraction and of the aspect ratio
            q = np.linspace(0.05, 0.95, 10)
            np.testing.assert_allclose(np.quantile(a, q), np.quantile(b, q), rtol=0.05, atol=0.01)
        assert (p.top >= 0).all() and (p.top + p.height <= height).all()
        assert (p.left >= 0).all() and (p.left + p.width <= width).all()
        # the crop lies anywhere it fits: the offsets are uniform over their ranges
        for offset, room in ((p.top, height - p.height), (p.left, width - p.width)):
            centred = offset - room / 2
            assert abs(centred.mean()) < 4 * centred.std() / math.sqrt(n)
    p = draw_params(simclr_view(32, blur=True), 3, 1, np.arange(n), 0, 32, 32)
    se = 4 * math.sqrt(0.25 / n)  # four standard errors of a rate
    for rate, want in [(p.flip, 0.5), (p.jitter, 0.8), (p.grayscale, 0.2), (p.blur, 0.5)]:
        assert abs(rate.mean() - want) < se
    for column, (low, high) in enumerate([(0.6, 1.4), (0.6, 1.4), (0.8, 1.2), (-0.1, 0.1)]):
        f = p.factors[:, column]
        assert low <= f.min() < low + 0.01 and high - 0.01 < f.max() <= high
        assert abs(f.mean() - (low + high) / 2) < 4 * (high - low) / math.sqrt(12 * n)
    orders = np.unique(p.order, axis=0, return_counts=True)[1]
    assert len(orders) == 24 and ((orders - n / 24) ** 2 / (n / 24)).sum() < 49.7  # evenly: chi-square, 23 dof, p 0.001
    assert 0.1 <= p.sigma.min() < 0.11 and 1.99 < p.sigma.max() <= 2.0
    mae = draw_params(mae_view(32, hflip=False), 3, 1, np.arange(n), 0, 32, 32)
    assert not (mae.flip.any() or mae.jitter.any() or mae.grayscale.any() or mae.blur.any())


def test_keyed_uniforms_are_a_pure_function_of_the_key():
    a = keyed_uniforms(7, 2, [0, 5, 9], 1, 40)
    assert a.shape == (3, 40) and (0 <= a).all() and (a < 1).all()
    np.testing.assert_array_equal(keyed_uniforms(7, 2, [9, 5], 1, 40), a[[2, 1]])
    np.testing.assert_array_equal(keyed_uniforms(7, 2, [5], 1, 10), a[1:2, :10])  # slots are fixed
    for other in (keyed_uniforms(8, 2, [0, 5, 9], 1, 40), keyed_uniforms(7, 3, [0, 5, 9], 1, 40),
                  keyed_uniforms(7, 2, [0, 5, 9], 0, 40)):
        assert not np.isclose(other, a).any()  # seed, epoch and stream give unrelated numbers
    many = keyed_uniforms(0, 0, np.arange(4000), 0, 25).ravel()
    counts = np.histogram(many, bins=20, range=(0, 1))[0]
    expected = len(many) / 20
    assert ((counts - expected) ** 2 / expected).sum() < 45  # chi-square, 19 dof: p < 0.001 above 43.8


def test_a_samples_views_do_not_depend_on_its_batch():
    pixels = torch.from_numpy(np.stack([noise_image(32, 32, seed=s) for s in range(8)])).permute(0, 3, 1, 2)
    augment = BatchAugment(msn_view_specs(32, 2, 12, blur=True), (0.5,) * 3, (0.25,) * 3, seed=4)
    alone = augment.views(pixels[[5]], [5], epoch=1)
    mixed = augment.views(pixels[[2, 7, 5, 0]], [2, 7, 5, 0], epoch=1)
    for one, batch in zip(alone, mixed):
        torch.testing.assert_close(batch[2:3], one, atol=1e-4, rtol=0)
    later = augment.views(pixels[[5]], [5], epoch=2)
    assert all(not torch.allclose(a, b) for a, b in zip(alone, later))
    assert not torch.allclose(alone[0], alone[1])  # target and anchor views are drawn apart
    assert [tuple(v.shape) for v in mixed] == [(4, 3, 32, 32)] * 2 + [(4, 3, 12, 12)] * 2


def test_images_of_several_sizes_take_the_same_path_one_by_one():
    images = [torch.from_numpy(noise_image(h, w, seed=h)).permute(2, 0, 1) for h, w in [(40, 28), (20, 50)]]
    augment = BatchAugment([simclr_view(16)] * 2, (0.0,) * 3, (1.0,) * 3, seed=1)
    listed = augment.views(images, [3, 8], epoch=0)
    for i, image in enumerate(images):
        single = augment.views(image[None], [[3, 8][i]], epoch=0)
        for view in range(2):
            torch.testing.assert_close(listed[view][i:i + 1], single[view], atol=1e-5, rtol=0)
