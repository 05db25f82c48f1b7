"""A view's steps on uint8 tensors (data/tensor_view.py) against the PIL pipeline's, in grey levels of 255."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import functional as F1
from torchvision.transforms.v2 import functional as TF2

from mimreg.data.batch_augment import draw_params
from mimreg.data.normalise import Normalise
from mimreg.data.tensor_view import jitter_uint8, view_steps_uint8
from mimreg.data.transforms import ViewSpec, simclr_view


def photo(size: int = 96, seed: int = 0) -> Image.Image:
    """Smooth saturated colour fields with grain: every hue, and the rounding of textured pixels."""
    y, x = np.mgrid[0:size, 0:size] / 12.0
    rng = np.random.default_rng(seed)
    channels = [127 + 90 * np.sin(x * (0.5 + c / 3) + y * (1 - c / 4) + 2 * c) for c in range(3)]
    pixels = np.stack(channels, -1) + rng.normal(0, 8, (size, size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def as_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous()


def grey_levels(a, b) -> np.ndarray:
    """|a - b| per pixel of two uint8 images (PIL or (3, H, W) tensors)."""
    to_array = lambda im: np.asarray(im.permute(1, 2, 0) if isinstance(im, torch.Tensor) else im, dtype=np.float64)
    return np.abs(to_array(a) - to_array(b))


def one_op(image: torch.Tensor, op: int, factor: float) -> torch.Tensor:
    """ColorJitter's op `op` (0 brightness ... 3 hue) alone at `factor`, on uint8."""
    return jitter_uint8(image, [op], [factor] * 4, [1.0] * 4)


# (op, factor, PIL's op, mean bound, max bound); measured mean / max: brightness 0 / 0, contrast 0.2-0.4 / 1,
# saturation 0.1 / 1, hue 0.4-1.5 / 7-11 (Pillow's 8-bit HSV and its shift truncated to 1/255 turn)
JITTER_CASES = [
    (0, 0.6, F1.adjust_brightness, 0.0, 0), (0, 1.37, F1.adjust_brightness, 0.0, 0),
    (1, 0.6, F1.adjust_contrast, 0.6, 1), (1, 1.37, F1.adjust_contrast, 0.6, 1),
    (2, 0.8, F1.adjust_saturation, 0.3, 1), (2, 1.2, F1.adjust_saturation, 0.3, 1),
    (3, -0.1, F1.adjust_hue, 2.0, 12), (3, 0.07, F1.adjust_hue, 2.0, 12),
]


@pytest.mark.parametrize("op, factor, pil_op, mean_bound, max_bound", JITTER_CASES)
def test_jitter_ops_on_uint8_match_pillow(op, factor, pil_op, mean_bound, max_bound):
    image = photo()
    out = one_op(as_tensor(image), op, factor)
    assert out.dtype == torch.uint8 and out.shape == (3, 96, 96)
    difference = grey_levels(out, pil_op(image, factor))
    assert difference.mean() <= mean_bound and difference.max() <= max_bound, (difference.mean(), difference.max())


@pytest.mark.parametrize("shift", [-0.1, 0.03, 0.07])
def test_hue_rotation_is_exact_within_rounding(shift):
    """The hue's difference to Pillow is Pillow's: ours is the float rotation rounded (within 0.5 grey
    level), Pillow's is off it by up to 11 (measured), from its 8-bit HSV."""
    image = as_tensor(photo())
    exact = TF2.adjust_hue(image.double() / 255, shift) * 255
    ours = one_op(image, 3, shift).double()
    assert (ours - exact).abs().max() <= 0.5 + 1e-3


def test_jitter_leaves_out_an_op_of_strength_zero():
    image = as_tensor(photo())
    assert torch.equal(jitter_uint8(image, [0, 3], [1.5, 1, 1, 0.2], [0.0, 0.4, 0.4, 0.0]), image)
    assert not torch.equal(jitter_uint8(image, [0, 3], [1.5, 1, 1, 0.2], [0.4, 0.4, 0.4, 0.0]), image)


def drawn(spec: ViewSpec, seed: int, size: int):
    """One sample's parameters of `spec`, as the device pipeline draws them for (seed, epoch 0, index 0)."""
    return draw_params(spec, seed, 0, [0], 0, size, size)


def pil_steps(image: Image.Image, spec: ViewSpec, p) -> Image.Image:
    """view_transform's steps after the crop on PIL, with the drawn parameters `p` of sample 0."""
    pil_ops = (F1.adjust_brightness, F1.adjust_contrast, F1.adjust_saturation, F1.adjust_hue)
    if p.flip[0]:
        image = F1.hflip(image)
    if p.jitter[0]:
        for op in p.order[0]:
            if spec.jitter[op] > 0:
                image = pil_ops[op](image, float(p.factors[0, op]))
    if p.grayscale[0]:
        image = F1.to_grayscale(image, 3)
    if p.blur[0]:
        image = F1.gaussian_blur(image, [spec.blur_kernel] * 2, [float(p.sigma[0])] * 2)
    return image


def test_grayscale_and_blur_match_pillow():
    image = photo()
    spec = ViewSpec(96, hflip=False, grayscale_p=1.0, blur_kernel=9, blur_p=1.0, blur_sigma=(1.5, 1.5))
    p = drawn(spec, 0, 96)
    assert p.grayscale[0] and p.blur[0] and not p.jitter[0]
    out = view_steps_uint8(as_tensor(image), spec, p, 0)
    difference = grey_levels(out, F1.gaussian_blur(F1.to_grayscale(image, 3), [9, 9], [1.5, 1.5]))
    assert difference.mean() < 0.6 and difference.max() <= 2  # grey: truncated vs rounded luma; blur within 1


def test_normalise_is_to_tensor_and_normalize():
    image, mean, std = photo(), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    out = Normalise(mean, std)(as_tensor(image)[None])[0]
    expected = T.Normalize(mean, std)(T.ToTensor()(image))
    assert out.dtype == torch.float32 and out.is_contiguous()
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)  # 1e-5 of a range ~ 4.5 wide


@pytest.mark.parametrize("blur", [False, True])
def test_view_steps_apply_the_drawn_parameters_as_pillow_does(blur):
    """With the drawn flip, jitter (factors and order), grayscale and blur sigma, the uint8 steps land
    within the ops' rounding of Pillow's ops on the same parameters; a different draw (a flip, grey,
    a hue 0.1 turn away) would be tens of grey levels off."""
    spec = simclr_view(48, blur=blur)
    image = photo(48, seed=1)
    differences, kinds = [], set()
    for seed in range(40):
        p = drawn(spec, seed, 48)
        kinds |= {name for name in ("flip", "jitter", "grayscale", "blur") if getattr(p, name)[0]}
        ours = view_steps_uint8(as_tensor(image), spec, p, 0)
        differences.append(grey_levels(ours, pil_steps(image, spec, p)).mean())
    assert kinds == {"flip", "jitter", "grayscale"} | ({"blur"} if blur else set())  # every step was drawn
    # measured: mean over views 0.8, worst view 1.7 grey levels (hue shifts in Pillow's 8-bit HSV);
    # a view of another seed is ~80 off
    assert np.mean(differences) < 1.2 and max(differences) < 3.0, (np.mean(differences), max(differences))
