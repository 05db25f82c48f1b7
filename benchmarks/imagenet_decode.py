"""img/s per core of 224-px random resized crops (+ flip) from ImageNet-sized JPEGs, by decoder path.

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/imagenet_decode.py [--images 150] [--repeats 5]

Paths, each on the same boxes and flips (drawn once per image, on the full size, as DraftCropDataset
draws them for seed 0, epoch 0: dataset-draft's MAE crops are these crops):
  pillow        Image.open + convert("RGB") + crop + bicubic resize (what RandomResizedCrop does)
  pillow-float  as pillow, + flip, ToTensor, Normalize: the plain Pillow path of a worker, ending in float
  pillow-draft  as pillow, the JPEG decoded at 1/2, 1/4 or 1/8 scale (Image.draft) when the crop allows
  tv-decode     torchvision.io.decode_jpeg on the CPU + crop + bicubic antialiased resize on the tensor
  mimreg        mimreg.data.draft (the default): draft decode when a reduction applies, else decode_jpeg;
                torch's bicubic resize on uint8
each ending in a (3, 224, 224) uint8 tensor; decode-only (decode_jpeg of the whole file, no crop: the
floor of the decode_jpeg paths); and what a loader worker runs per sample, fetched in batches of 64
as the DataLoader asks: TransformedDataset (PIL RandomResizedCrop, flip, ToTensor, Normalize: the
plain Pillow path, ending in float) and DraftCropDataset (the default, ending in uint8: the training
device converts and normalises the batch), for one MAE view (dataset-*) and a SimCLR sample of two
views with colour jitter and grayscale (simclr2-*). `+cpu-norm` adds that batched conversion, timed
here on one CPU core, for training on the CPU itself. JPEGs are CIFAR-10
images upscaled (bicubic) with added grain, at quality 90, to ImageNet's typical 500x375 and to
its larger tail (1000x750). One core (torch.set_num_threads(1)), paths interleaved per repeat,
median of the repeats.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.io import ImageReadMode, decode_jpeg, read_file
from torchvision.transforms.v2 import functional as TF

from mimreg.data.batch_augment import draw_params
from mimreg.data.draft import DraftCropDataset, decode_for_crops, draft_reduction, read_head, resized_crop
from mimreg.data.files import ImageFileDataset
from mimreg.data.seeded import TransformedDataset
from mimreg.data.normalise import Normalise
from mimreg.data.transforms import IMAGENET_STATS, MultiView, mae_view, simclr_view, view_transform

CIFAR = Path("/work/data/c10/train")
OUT = 224


def make_jpegs(folder: Path, count: int, size: tuple[int, int]) -> list[str]:
    sources = sorted(CIFAR.glob("*/*.jpg"))[:: max(1, 50000 // count)][:count]
    rng = np.random.default_rng(0)
    paths = []
    for i, source in enumerate(sources):
        big = np.asarray(Image.open(source).convert("RGB").resize(size, Image.BICUBIC), dtype=np.float32)
        grain = rng.normal(0, 6, big.shape)  # photo-like detail, so the entropy decoding has work to do
        path = folder / f"{size[0]}x{size[1]}_{i:04d}.JPEG"
        Image.fromarray(np.clip(big + grain, 0, 255).astype(np.uint8)).save(path, "JPEG", quality=90)
        paths.append(str(path))
    return paths


def to_uint8(image: Image.Image, flip: bool) -> torch.Tensor:
    tensor = torch.from_numpy(np.array(image)).permute(2, 0, 1)
    return tensor.flip(-1) if flip else tensor


def pillow(path, box, flip):
    top, left, height, width = box
    with Image.open(path) as image:
        crop = image.convert("RGB").crop((left, top, left + width, top + height)).resize((OUT, OUT), Image.BICUBIC)
    return to_uint8(crop, flip)


TO_FLOAT = T.Compose([T.ToTensor(), T.Normalize(*IMAGENET_STATS)])  # the PIL path's last steps


def pillow_float(path, box, flip):
    """The plain Pillow path of a worker (view_transform's steps) on the given box and flip: crop, resize,
    flip, ToTensor, Normalize, ending in float as TransformedDataset does."""
    top, left, height, width = box
    with Image.open(path) as image:
        crop = image.convert("RGB").crop((left, top, left + width, top + height)).resize((OUT, OUT), Image.BICUBIC)
    return TO_FLOAT(crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else crop)


def pillow_draft(path, box, flip):
    top, left, height, width = box
    with Image.open(path) as image:
        r, full_width = draft_reduction(box, OUT), image.size[0]
        scale = image.draft("RGB", (image.size[0] // r, image.size[1] // r))[1][2] / full_width if r > 1 else 1.0
        region = (left * scale, top * scale, (left + width) * scale, (top + height) * scale)
        crop = image.convert("RGB").resize((OUT, OUT), Image.BICUBIC, box=region)
    return to_uint8(crop, flip)


def mimreg_path(path, box, flip):
    with open(path, "rb") as file:
        decoded, scale = decode_for_crops(read_head(file.read()), [box], [OUT])
    out = resized_crop(decoded, box, scale, OUT)
    return out.flip(-1) if flip else out


def tv_decode(path, box, flip):
    top, left, height, width = box
    image = decode_jpeg(read_file(path), mode=ImageReadMode.RGB)
    out = TF.resized_crop(image, top, left, height, width, [OUT, OUT],
                          interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
    return out.flip(-1) if flip else out


def decode_only(path, box, flip):
    return decode_jpeg(read_file(path), mode=ImageReadMode.RGB)


def sample_draws(paths, seed=0):
    """Each image's box and flip, as the draft dataset draws them (epoch 0)."""
    draws = []
    for index, path in enumerate(paths):
        with Image.open(path) as image:
            p = draw_params(mae_view(OUT), seed, 0, [index], 0, image.size[1], image.size[0])
        draws.append(((int(p.top[0]), int(p.left[0]), int(p.height[0]), int(p.width[0])), bool(p.flip[0])))
    return draws


BATCH = 64  # samples a loader worker fetches at once


def fetch(dataset, indices):
    getitems = getattr(dataset, "__getitems__", None)
    return getitems(indices) if getitems else [dataset[i] for i in indices]


def time_paths(paths, draws, datasets, repeats):
    fns = {"pillow": pillow, "pillow-float": pillow_float, "pillow-draft": pillow_draft, "tv-decode": tv_decode,
           "mimreg": mimreg_path,
           "decode-only": decode_only}
    rates = {name: [] for name in [*fns, *datasets]}
    for repeat in range(repeats):
        order = list(rates)[repeat % len(rates):] + list(rates)[:repeat % len(rates)]
        for name in order:
            start = time.perf_counter()
            if name in fns:
                for path, (box, flip) in zip(paths, draws):
                    fns[name](path, box, flip)
            else:  # as the DataLoader's fetcher asks: a whole batch where the dataset takes one
                for batch in np.array_split(np.arange(len(paths)), max(1, len(paths) // BATCH)):
                    fetch(datasets[name], batch.tolist())
            rates[name].append(len(paths) / (time.perf_counter() - start))
    return {name: statistics.median(r) for name, r in rates.items()}


def differences(paths, draws):
    """Mean |path - pillow| in grey levels, over every pixel of every crop, per path."""
    fns = {"pillow-draft": pillow_draft, "tv-decode": tv_decode, "mimreg": mimreg_path}
    out = {name: [] for name in fns}
    for path, (box, flip) in zip(paths, draws):
        ref = pillow(path, box, flip).float()
        for name, fn in fns.items():
            out[name].append((fn(path, box, flip).float() - ref).abs().mean().item())
    return {k: float(np.mean(v)) for k, v in out.items()}


def run(size, count, repeats, folder):
    paths = make_jpegs(folder, count, size)
    draws = sample_draws(paths)
    reductions = np.bincount([draft_reduction(box, OUT) for box, _ in draws], minlength=9)
    raw = ImageFileDataset(paths, np.zeros(len(paths), dtype=np.int64), ["x"])
    spec, simclr = mae_view(OUT), simclr_view(OUT)
    datasets = {"dataset-pil": TransformedDataset(raw, view_transform(spec, *IMAGENET_STATS), seed=0),
                "dataset-draft": DraftCropDataset(raw, [spec], 0, False, False),
                "simclr2-pil": TransformedDataset(raw, MultiView(view_transform(simclr, *IMAGENET_STATS), 2), seed=0),
                "simclr2-draft": DraftCropDataset(raw, [simclr] * 2, 0, True, False)}
    rates = time_paths(paths, draws, datasets, repeats)
    per_image = normalise_seconds_per_image()
    for name in ("dataset-draft", "simclr2-draft"):
        views = 2 if name.startswith("simclr2") else 1
        rates[f"{name}+cpu-norm"] = 1 / (1 / rates[name] + views * per_image)
    kb = np.mean([os.path.getsize(p) for p in paths]) / 1024
    lines = [f"{size[0]}x{size[1]} JPEGs (q90, mean {kb:.0f} KB), {count} images, {repeats} repeats; "
             f"draft reductions of the 224-px crops: " +
             ", ".join(f"1/{r}: {reductions[r]}" for r in (1, 2, 4, 8) if reductions[r])]
    for name, rate in rates.items():
        base = rates[{"dataset": "dataset-pil", "simclr2": "simclr2-pil"}.get(name.split("-")[0], "pillow")]
        same = f", {rate / rates['pillow-float']:.2f}x pillow-float" if name.startswith("dataset-draft") else ""
        lines.append(f"  {name:14s} {rate:7.1f} img/s per core  ({rate / base:.2f}x{same})")
    diffs = differences(paths, draws)
    lines.append("  mean |difference| to pillow's crop, grey levels: " +
                 ", ".join(f"{k} {v:.2f}" for k, v in diffs.items()))
    return lines, rates


def normalise_seconds_per_image(batch: int = BATCH, repeats: int = 5) -> float:
    """Seconds per 224-px view of Normalise (uint8 -> float, normalised) on a batch, on this core."""
    images, normalise = torch.randint(0, 256, (batch, 3, OUT, OUT), dtype=torch.uint8), Normalise(*IMAGENET_STATS)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        normalise(images)
        times.append(time.perf_counter() - start)
    return statistics.median(times) / batch


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        for size in ((500, 375), (1000, 750)):
            lines, _ = run(size, args.images, args.repeats, Path(tmp))
            print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
