"""Multi-view inputs of the joint-embedding methods: SimCLR augmentation, MultiView, collation."""

import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from mimreg.config import load_config
from mimreg.data import BadSample, MultiView, TransformedDataset, collate_skipping_bad, load_dataset, simclr_transform
from mimreg.data.transforms import pretrain_transform
from mimreg.engine.data import build_pretrain_data, collate_keep_size, pretrain_views
from mimreg.errors import DataError

IDENTITY = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
RED = (200, 30, 30)


def solid(colour=RED, size=(32, 32)) -> Image.Image:
    return Image.new("RGB", size, colour)


def striped(size=(40, 28)) -> Image.Image:
    image = Image.new("RGB", size)
    image.putdata([((x * 7) % 256, (y * 11) % 256, ((x + y) * 5) % 256) for y in range(size[1]) for x in range(size[0])])
    return image


@pytest.mark.parametrize("size", [(50, 30), (30, 50), (8, 8)])
def test_simclr_transform_shape_and_dtype(size):
    torch.manual_seed(0)
    out = simclr_transform(24)(striped(size))
    assert out.shape == (3, 24, 24) and out.dtype == torch.float32


def test_simclr_transform_normalises_with_the_given_stats():
    torch.manual_seed(0)
    raw = simclr_transform(16, **IDENTITY)(striped())
    torch.manual_seed(0)
    normed = simclr_transform(16, mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 2.0))(striped())
    assert 0.0 <= raw.min() and raw.max() <= 1.0
    expected = (raw - torch.tensor([0.5, 0.25, 0.0])[:, None, None]) / torch.tensor([0.5, 0.25, 2.0])[:, None, None]
    torch.testing.assert_close(normed, expected)


def test_colour_jitter_changes_colours():
    transform = simclr_transform(16, crop_scale=(1.0, 1.0), hflip=False, **IDENTITY)
    torch.manual_seed(0)
    draws = [transform(solid()) for _ in range(30)]
    colours = [d.mean(dim=(1, 2)) for d in draws]
    original = torch.tensor(RED) / 255
    for d, c in zip(draws, colours):  # a solid image stays solid: only its colour changes
        assert (d - c[:, None, None]).abs().max() < 2 / 255
    assert not torch.allclose(draws[0], draws[1])  # two draws differ
    changed = [c for c in colours if (c - original).abs().max() > 0.02]
    assert len(changed) >= 20  # jitter p 0.8, grayscale p 0.2
    grey = [c for c in colours if (c.max() - c.min()) < 1e-6]
    assert 1 <= len(grey) <= 15  # RandomGrayscale(p=0.2)
    distinct = {tuple(round(v, 3) for v in c.tolist()) for c in colours}
    assert len(distinct) >= 20
    # without the colour steps (the MAE augmentation), the colour never moves
    plain = pretrain_transform(16, crop_scale=(1.0, 1.0), hflip=False, **IDENTITY)
    for _ in range(5):
        torch.testing.assert_close(plain(solid()).mean(dim=(1, 2)), original, atol=1e-6, rtol=0)


def test_simclr_transform_steps_and_blur_option():
    kinds = [type(t) for t in simclr_transform(32).transforms]
    assert kinds == [T.RandomResizedCrop, T.RandomHorizontalFlip, T.RandomApply, T.RandomGrayscale, T.ToTensor,
                     T.Normalize]
    jitter = simclr_transform(32).transforms[2]
    assert jitter.p == 0.8 and isinstance(jitter.transforms[0], T.ColorJitter)
    assert simclr_transform(32).transforms[0].scale == (0.08, 1.0)
    assert T.RandomHorizontalFlip not in [type(t) for t in simclr_transform(32, hflip=False).transforms]
    for size, kernel in ((32, 3), (96, 9), (64, 7)):
        blur = simclr_transform(size, blur=True).transforms[4]
        assert isinstance(blur, T.RandomApply) and blur.p == 0.5
        assert list(blur.transforms[0].kernel_size) == [kernel, kernel]


def test_multiview_returns_independent_views():
    transform = simclr_transform(16)
    torch.manual_seed(1)
    views = MultiView(transform, 2)(striped())
    assert isinstance(views, list) and len(views) == 2
    assert all(v.shape == (3, 16, 16) for v in views)
    assert not torch.allclose(views[0], views[1])
    torch.manual_seed(1)  # the same transform drawn twice in sequence
    again = [transform(striped()), transform(striped())]
    for a, b in zip(views, again):
        torch.testing.assert_close(a, b)
    assert len(MultiView(transform, 3)(striped())) == 3


def test_seeded_dataset_of_views_is_reproducible_per_index_and_epoch():
    raw = load_dataset("synthetic", "train", None)
    dataset = TransformedDataset(raw, MultiView(simclr_transform(32), 2), seed=3)
    (a0, a1), label = dataset[5]
    assert label == raw[5][1]
    (b0, b1), _ = dataset[5]
    assert torch.equal(a0, b0) and torch.equal(a1, b1)
    assert not torch.equal(a0, a1)
    dataset.set_epoch(1)
    (c0, _), _ = dataset[5]
    assert not torch.equal(a0, c0)


def views_sample(k: int, num_views: int = 2, size: int = 4):
    """A (views, label) sample whose view v of image k is filled with 10 k + v."""
    return [torch.full((3, size, size), float(10 * k + v)) for v in range(num_views)], k


def test_collate_stacks_each_view_and_skips_bad_samples():
    samples = [views_sample(0), BadSample("/x/bad.png"), views_sample(2), views_sample(3)]
    batch = collate_skipping_bad(samples)
    assert isinstance(batch.images, list) and len(batch.images) == 2
    for v, view in enumerate(batch.images):
        assert view.shape == (3, 3, 4, 4) and view.dtype == torch.float32
        assert view[:, 0, 0, 0].tolist() == [float(10 * k + v) for k in (0, 2, 3)]
    assert batch.labels.tolist() == [0, 2, 3] and batch.bad_files == ["/x/bad.png"]
    three = collate_skipping_bad([views_sample(0, 3), views_sample(1, 3)])
    assert len(three.images) == 3 and three.images[2][1, 0, 0, 0].item() == 12.0


def test_collate_keep_size_repeats_good_samples_in_every_view():
    samples = [views_sample(0), BadSample("/b1"), views_sample(2), BadSample("/b3"), BadSample("/b4")]
    batch = collate_keep_size(samples)
    assert len(batch) == 5 and batch.bad_files == ["/b1", "/b3", "/b4"]
    order = [0, 2, 0, 2, 0]  # the 3 missing rows repeat the good ones in turn
    assert batch.labels.tolist() == order
    for v, view in enumerate(batch.images):
        assert view.shape == (5, 3, 4, 4)
        assert view[:, 0, 0, 0].tolist() == [float(10 * k + v) for k in order]  # rows match across views


def test_collate_keep_size_single_view_and_edge_cases():
    samples = [(torch.full((3, 2, 2), 1.0), 1), BadSample("/b"), (torch.full((3, 2, 2), 2.0), 2)]
    batch = collate_keep_size(samples)
    assert batch.images[:, 0, 0, 0].tolist() == [1.0, 2.0, 1.0] and batch.labels.tolist() == [1, 2, 1]
    good = [views_sample(0), views_sample(1)]
    untouched = collate_keep_size(good)
    assert untouched.bad_files == [] and untouched.images[1][:, 0, 0, 0].tolist() == [1.0, 11.0]
    with pytest.raises(DataError, match="every image of a batch"):
        collate_keep_size([BadSample("/a"), BadSample("/b")])


def synthetic_config(recipe, *sets):
    return load_config(f"digits/{recipe}", ["data.name=synthetic", "optim.batch_size=16", "data.subset=64",
                                            "train.device=cpu", *sets])


def test_pretrain_views_follow_the_config():
    cfg = synthetic_config("simclr")
    transform = pretrain_views(cfg, (0.0,) * 3, (1.0,) * 3)
    assert isinstance(transform, MultiView) and transform.num_views == 2
    assert T.RandomGrayscale in [type(t) for t in transform.transform.transforms]
    assert transform.transform.transforms[0].scale == (0.08, 1.0)
    single = pretrain_views(synthetic_config("mae"), (0.0,) * 3, (1.0,) * 3)
    assert isinstance(single, T.Compose) and T.RandomGrayscale not in [type(t) for t in single.transforms]
    three = pretrain_views(synthetic_config("simclr", "data.num_views=3"), (0.0,) * 3, (1.0,) * 3)
    assert three.num_views == 3


def test_pretrain_loader_gives_a_list_of_views():
    data = build_pretrain_data(synthetic_config("simclr"), world=1, rank=0)
    batch = next(iter(data.loader(0, 0, num_workers=0, pin_memory=False)))
    assert isinstance(batch.images, list) and len(batch.images) == 2
    assert all(v.shape == (16, 3, 32, 32) and v.dtype == torch.float32 for v in batch.images)
    assert batch.labels.shape == (16,)
    assert not torch.allclose(batch.images[0], batch.images[1])
