"""Image pipelines for pretraining and evaluation, with per-dataset normalisation."""

from __future__ import annotations

from typing import Sequence

from torchvision import transforms as T

from mimreg.errors import DataError

Stats = tuple[tuple[float, float, float], tuple[float, float, float]]

IMAGENET_STATS: Stats = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


class _StatsTable(dict):
    """A dict whose unknown keys fall back to ImageNet statistics."""

    def __missing__(self, name: str) -> Stats:
        return IMAGENET_STATS


# Per-channel (mean, std) of pixel values in [0, 1]. Digits and synthetic are measured on
# their train splits; datasets of natural photos without a well-known value use ImageNet's.
DATASET_STATS: dict[str, Stats] = _StatsTable({
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "stl10": IMAGENET_STATS,
    "tiny-imagenet": IMAGENET_STATS,
    "imagefolder": IMAGENET_STATS,
    "digits": ((0.3057,) * 3, (0.3235,) * 3),
    "synthetic": ((0.3434, 0.3394, 0.3408), (0.2269, 0.2217, 0.2250)),
})

DEFAULT_IMG_SIZES = {
    "cifar10": 32, "cifar100": 32, "digits": 32, "synthetic": 32,
    "stl10": 96, "tiny-imagenet": 64, "imagefolder": 224,
}


def dataset_stats(name: str) -> Stats:
    """(mean, std) for normalising `name`; ImageNet's for names not in DATASET_STATS."""
    return DATASET_STATS[name]


def default_img_size(name: str) -> int:
    """The native (or conventional) training resolution of dataset `name`."""
    if name not in DEFAULT_IMG_SIZES:
        raise DataError(
            f"No default image size for dataset {name!r}. Use one of {', '.join(DEFAULT_IMG_SIZES)} "
            "or set the image size explicitly."
        )
    return DEFAULT_IMG_SIZES[name]


def pretrain_transform(img_size: int, crop_scale: tuple[float, float] = (0.2, 1.0), hflip: bool = True,
                       mean: Sequence[float] = IMAGENET_STATS[0],
                       std: Sequence[float] = IMAGENET_STATS[1]) -> T.Compose:
    """Random resized crop (bicubic) + optional horizontal flip, then tensor + normalise."""
    steps = [T.RandomResizedCrop(img_size, scale=tuple(crop_scale),
                                 interpolation=T.InterpolationMode.BICUBIC)]
    if hflip:
        steps.append(T.RandomHorizontalFlip())
    steps += [T.ToTensor(), T.Normalize(tuple(mean), tuple(std))]
    return T.Compose(steps)


def eval_transform(img_size: int, mean: Sequence[float] = IMAGENET_STATS[0],
                   std: Sequence[float] = IMAGENET_STATS[1]) -> T.Compose:
    """Deterministic: resize the short side to `img_size` (bicubic), centre crop, normalise."""
    return T.Compose([
        T.Resize(img_size, interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(img_size),
        T.ToTensor(),
        T.Normalize(tuple(mean), tuple(std)),
    ])


def simclr_transform(img_size: int, crop_scale: tuple[float, float] = (0.08, 1.0), hflip: bool = True,
                     blur: bool = False, mean: Sequence[float] = IMAGENET_STATS[0],
                     std: Sequence[float] = IMAGENET_STATS[1]) -> T.Compose:
    """SimCLR views: resized crop, flip, colour jitter (0.4, 0.4, 0.2, 0.1; p 0.8), grayscale
    (p 0.2), optional Gaussian blur (p 0.5; off by default as at CIFAR size), normalise."""
    steps = [T.RandomResizedCrop(img_size, scale=tuple(crop_scale), interpolation=T.InterpolationMode.BICUBIC)]
    if hflip:
        steps.append(T.RandomHorizontalFlip())
    steps += [T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8), T.RandomGrayscale(p=0.2)]
    if blur:
        kernel = max(3, (img_size // 10) | 1)  # about 10% of the image, odd
        steps.append(T.RandomApply([T.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=0.5))
    steps += [T.ToTensor(), T.Normalize(tuple(mean), tuple(std))]
    return T.Compose(steps)


class MultiView:
    """Apply one random transform `num_views` times: a list of independently augmented views."""

    def __init__(self, transform, num_views: int):
        self.transform, self.num_views = transform, num_views

    def __call__(self, image) -> list:
        return [self.transform(image) for _ in range(self.num_views)]


class MSNViews:
    """MSN's views: a target and an anchor view (crop scale 0.3-1) and `focal` small views (crop
    scale 0.05-0.3) at `focal_size`, each with SimCLR colour augmentation."""

    def __init__(self, img_size: int, focal: int, focal_size: int, blur: bool, mean, std):
        self.large = simclr_transform(img_size, (0.3, 1.0), True, blur, mean, std)
        self.small = simclr_transform(focal_size, (0.05, 0.3), True, blur, mean, std)
        self.focal = focal

    def __call__(self, image) -> list:
        return [self.large(image), self.large(image)] + [self.small(image) for _ in range(self.focal)]


def msn_views(img_size: int, focal: int, focal_size: int, blur: bool = False,
              mean: Sequence[float] = IMAGENET_STATS[0], std: Sequence[float] = IMAGENET_STATS[1]) -> MSNViews:
    return MSNViews(img_size, focal, focal_size, blur, mean, std)
