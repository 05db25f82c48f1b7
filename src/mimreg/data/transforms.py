"""Image pipelines for pretraining and evaluation, with per-dataset normalisation."""

from __future__ import annotations

from dataclasses import dataclass
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
    "imagenet": IMAGENET_STATS,
    "imagenet100": IMAGENET_STATS,
    "imagefolder": IMAGENET_STATS,
    "digits": ((0.3057,) * 3, (0.3235,) * 3),
    "synthetic": ((0.3434, 0.3394, 0.3408), (0.2269, 0.2217, 0.2250)),
})

DEFAULT_IMG_SIZES = {
    "cifar10": 32, "cifar100": 32, "digits": 32, "synthetic": 32,
    "stl10": 96, "tiny-imagenet": 64, "imagefolder": 224, "imagenet": 224, "imagenet100": 224,
    # imagefolder, hf and webdataset: a run reads the size from the first images (config.fill_img_size);
    # 224 where none is read
    "hf": 224, "webdataset": 224,
}

# Evaluation's centre crop as a fraction of the resized short side: ImageNet's is 224 of 256 (the
# protocol of MAE's and the other papers' linear probes and fine-tuning); datasets at their native
# size keep the whole image.
EVAL_CROP_FRACTION = {"imagenet": 0.875, "imagenet100": 0.875}


def eval_crop_fraction(name: str) -> float:
    return EVAL_CROP_FRACTION.get(name, 1.0)


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


@dataclass(frozen=True)
class ViewSpec:
    """One augmented view: what both pipelines (PIL per sample, batched on the device) apply.

    Random resized crop to `size` (scale and log-uniform aspect ratio ranges, as torchvision's),
    optional flip (p 0.5), colour jitter of (brightness, contrast, saturation, hue) strengths with
    probability `jitter_p` (ops in random order), grayscale with `grayscale_p`, Gaussian blur of an
    odd `blur_kernel` (0: none) with sigma in `blur_sigma` and probability `blur_p`.
    """

    size: int
    crop_scale: tuple[float, float] = (0.2, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: bool = True
    jitter: tuple[float, float, float, float] | None = None
    jitter_p: float = 0.8
    grayscale_p: float = 0.0
    blur_kernel: int = 0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_p: float = 0.5


SIMCLR_JITTER = (0.4, 0.4, 0.2, 0.1)


def mae_view(img_size: int, crop_scale=(0.2, 1.0), hflip: bool = True) -> ViewSpec:
    return ViewSpec(img_size, tuple(crop_scale), hflip=hflip)


def simclr_view(img_size: int, crop_scale=(0.08, 1.0), hflip: bool = True, blur: bool = False) -> ViewSpec:
    kernel = max(3, (img_size // 10) | 1) if blur else 0  # about 10% of the image, odd
    return ViewSpec(img_size, tuple(crop_scale), hflip=hflip, jitter=SIMCLR_JITTER, grayscale_p=0.2,
                    blur_kernel=kernel)


def msn_view_specs(img_size: int, focal: int, focal_size: int, blur: bool = False) -> list[ViewSpec]:
    """MSN's target and anchor views (crop scale 0.3-1), then `focal` views (0.05-0.3) at `focal_size`."""
    large = simclr_view(img_size, (0.3, 1.0), True, blur)
    return [large, large] + [simclr_view(focal_size, (0.05, 0.3), True, blur)] * focal


def view_transform(spec: ViewSpec, mean: Sequence[float] = IMAGENET_STATS[0],
                   std: Sequence[float] = IMAGENET_STATS[1]) -> T.Compose:
    """The PIL pipeline of one view spec, ending in a normalised tensor."""
    steps = [T.RandomResizedCrop(spec.size, scale=spec.crop_scale, ratio=spec.crop_ratio,
                                 interpolation=T.InterpolationMode.BICUBIC)]
    if spec.hflip:
        steps.append(T.RandomHorizontalFlip())
    if spec.jitter is not None:
        steps.append(T.RandomApply([T.ColorJitter(*spec.jitter)], p=spec.jitter_p))
    if spec.grayscale_p > 0:
        steps.append(T.RandomGrayscale(p=spec.grayscale_p))
    if spec.blur_kernel:
        steps.append(T.RandomApply([T.GaussianBlur(spec.blur_kernel, sigma=spec.blur_sigma)], p=spec.blur_p))
    steps += [T.ToTensor(), T.Normalize(tuple(mean), tuple(std))]
    return T.Compose(steps)


def pretrain_transform(img_size: int, crop_scale: tuple[float, float] = (0.2, 1.0), hflip: bool = True,
                       mean: Sequence[float] = IMAGENET_STATS[0],
                       std: Sequence[float] = IMAGENET_STATS[1]) -> T.Compose:
    """Random resized crop (bicubic) + optional horizontal flip, then tensor + normalise."""
    return view_transform(mae_view(img_size, crop_scale, hflip), mean, std)


def eval_transform(img_size: int, mean: Sequence[float] = IMAGENET_STATS[0],
                   std: Sequence[float] = IMAGENET_STATS[1], crop_fraction: float = 1.0) -> T.Compose:
    """Deterministic: resize the short side to `img_size / crop_fraction` (bicubic; 256 for 224 at
    ImageNet's 0.875), centre crop `img_size`, normalise."""
    return T.Compose([
        T.Resize(round(img_size / crop_fraction), interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(img_size),
        T.ToTensor(),
        T.Normalize(tuple(mean), tuple(std)),
    ])


def simclr_transform(img_size: int, crop_scale: tuple[float, float] = (0.08, 1.0), hflip: bool = True,
                     blur: bool = False, mean: Sequence[float] = IMAGENET_STATS[0],
                     std: Sequence[float] = IMAGENET_STATS[1]) -> T.Compose:
    """SimCLR views: resized crop, flip, colour jitter (0.4, 0.4, 0.2, 0.1; p 0.8), grayscale
    (p 0.2), optional Gaussian blur (p 0.5; off by default as at CIFAR size), normalise."""
    return view_transform(simclr_view(img_size, crop_scale, hflip, blur), mean, std)


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
        specs = msn_view_specs(img_size, max(focal, 1), focal_size, blur)
        self.large, self.small = view_transform(specs[0], mean, std), view_transform(specs[-1], mean, std)
        self.focal = focal

    def __call__(self, image) -> list:
        return [self.large(image), self.large(image)] + [self.small(image) for _ in range(self.focal)]


def msn_views(img_size: int, focal: int, focal_size: int, blur: bool = False,
              mean: Sequence[float] = IMAGENET_STATS[0], std: Sequence[float] = IMAGENET_STATS[1]) -> MSNViews:
    return MSNViews(img_size, focal, focal_size, blur, mean, std)
