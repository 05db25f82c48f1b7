import numpy as np
import pytest
import torch
from PIL import Image

from mimreg.data import (
    DATASET_NAMES,
    DATASET_STATS,
    IMAGENET_STATS,
    dataset_stats,
    default_img_size,
    eval_transform,
    load_dataset,
    pretrain_transform,
)
from mimreg.errors import DataError


@pytest.mark.parametrize("size", [(50, 30), (30, 50), (8, 8)])
@pytest.mark.parametrize("dataset", ["cifar10", None])  # None: the default, ImageNet's statistics
def test_output_is_normalised_float_square(size, dataset):
    image = Image.new("RGB", size, (128, 64, 32))  # one colour: any crop, resize or flip keeps it
    mean, std = dataset_stats(dataset) if dataset else IMAGENET_STATS
    stats = {"mean": mean, "std": std} if dataset else {}
    expected = (torch.tensor([128, 64, 32]) / 255 - torch.tensor(mean)) / torch.tensor(std)
    for transform in (pretrain_transform(24, **stats), eval_transform(24, **stats)):
        out = transform(image)
        assert out.shape == (3, 24, 24) and out.dtype == torch.float32
        torch.testing.assert_close(out, expected[:, None, None].expand(3, 24, 24), rtol=0, atol=1e-5)


def test_eval_transform_normalises_with_given_stats():
    mean, std = (0.5, 0.25, 0.0), (0.5, 0.25, 1.0)
    out = eval_transform(16, mean=mean, std=std)(Image.new("RGB", (16, 16), (255, 0, 51)))
    torch.testing.assert_close(out[:, 0, 0], torch.tensor([1.0, -1.0, 0.2]))


def test_eval_transform_is_deterministic_centre_crop():
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, 10:30] = 255  # white centre square, black side bands
    out = eval_transform(20, mean=(0, 0, 0), std=(1, 1, 1))(Image.fromarray(pixels))
    assert out.min() > 0.99


def test_pretrain_transform_options():
    image = Image.fromarray(np.arange(32 * 32 * 3, dtype=np.uint8).reshape(32, 32, 3))
    no_aug = pretrain_transform(32, crop_scale=(1.0, 1.0), hflip=False, mean=(0, 0, 0), std=(1, 1, 1))
    # With full-area crops of a square image and no flip, the image comes back as is.
    torch.testing.assert_close(no_aug(image), torch.from_numpy(np.array(image)).permute(2, 0, 1) / 255.0)
    assert len(pretrain_transform(32, hflip=False).transforms) == len(pretrain_transform(32).transforms) - 1


def test_stats_and_sizes_cover_every_dataset():
    for name in DATASET_NAMES:
        mean, std = DATASET_STATS[name]
        assert len(mean) == len(std) == 3
        assert default_img_size(name) in (32, 64, 96, 224)
    assert DATASET_STATS["some-new-folder"] == IMAGENET_STATS == dataset_stats("another")
    assert DATASET_STATS["cifar10"] != IMAGENET_STATS
    sizes = [default_img_size(n) for n in ("cifar10", "stl10", "tiny-imagenet", "imagefolder")]
    assert sizes == [32, 96, 64, 224]
    with pytest.raises(DataError, match="cifar10"):
        default_img_size("mnist")


@pytest.mark.parametrize("name", ["digits", "synthetic"])
def test_builtin_stats_match_their_data(name):
    train = load_dataset(name, "train")
    pixels = np.stack([np.asarray(train[i][0]) for i in range(len(train))]) / 255.0
    mean, std = DATASET_STATS[name]
    np.testing.assert_allclose(pixels.mean(axis=(0, 1, 2)), mean, atol=2e-3)
    np.testing.assert_allclose(pixels.std(axis=(0, 1, 2)), std, atol=2e-3)
