"""Input pipeline throughput: the loader pipeline (PIL per sample) against the device pipeline
(batched on the training device), side by side in one run, per augmentation.

Per core by default (torch on one thread, no loader workers), 32x32 images already in memory (the
512 synthetic images), batch 256, rounds interleaved so that machine noise hits both pipelines
alike; the median img/s of each is reported with their ratio. Target on CPU: device >= 10x loader
for the MAE and SimCLR augmentations. With --jpeg-folder, the loader also decodes JPEG files (an
imagefolder, e.g. CIFAR-10 as JPEGs) and the device pipeline reads its decoded cache.

    python benchmarks/data_pipeline.py [--rounds 3] [--batch 256] [--device cpu|cuda] [--jpeg-folder DIR]
        [--cases mae,simclr (2 views)] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from mimreg.config import load_config
from mimreg.engine.data import build_pretrain_data

CASES = {  # name -> (recipe, extra settings, batches per round)
    "mae": ("mae", [], 4),
    "simclr (2 views)": ("simclr", [], 2),
    "msn (2 + 10 focal views)": ("msn", [], 1),
}
TARGET = {"mae": 10.0, "simclr (2 views)": 10.0}


def throughput(data, batches: int, device: torch.device, epoch: int) -> float:
    """img/s of producing `batches` batches (views on `device`), over as many epochs as needed."""
    done, images = 0, 0
    start = time.perf_counter()
    while done < batches:
        for batch in data.loader(epoch, 0, num_workers=0, pin_memory=False):
            views = batch.images if isinstance(batch.images, list) else [batch.images]
            [v.to(device) for v in views]
            images += len(batch.labels)
            done += 1
            if done == batches:
                break
        epoch += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    return images / (time.perf_counter() - start)


def build(recipe: str, sets: list[str], pipeline: str, args):
    common = [f"optim.batch_size={args.batch}", f"data.pipeline={pipeline}"]
    if args.jpeg_folder:
        common += ["data.name=imagefolder", f"data.root={args.jpeg_folder}", "data.img_size=32"]
    else:
        common += ["data.name=synthetic"]
    cfg = load_config(f"digits/{recipe}", common + sets)
    return build_pretrain_data(cfg, world=1, rank=0, device=args.device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--jpeg-folder", default=None)
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated augmentations to measure")
    parser.add_argument("--json", help="also write the medians and ratios to this JSON file")
    args = parser.parse_args()
    cases = {name: CASES[name] for name in args.cases.split(",")}
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    pipelines = {name: {p: build(recipe, sets, p, args) for p in ("loader", "device")}
                 for name, (recipe, sets, _) in cases.items()}
    rates = {(name, p): [] for name in cases for p in ("loader", "device")}
    for name, (_, _, batches) in cases.items():  # warm-up: first batches, caches, lookup tables
        for p in ("loader", "device"):
            throughput(pipelines[name][p], 1, device, 0)
    for r in range(args.rounds):
        for name, (_, _, batches) in cases.items():
            for p in ("loader", "device"):
                rates[(name, p)].append(throughput(pipelines[name][p], batches, device, 1 + r))
    source = args.jpeg_folder or "synthetic 32x32 uint8 in memory"
    print(f"# data pipeline img/s, {source}, batch {args.batch}, {args.threads} thread(s), "
          f"device {device}, torch {torch.__version__}, median of {args.rounds} interleaved rounds")
    print(f"{'augmentation':28s} {'loader':>10s} {'device':>10s} {'ratio':>8s}  target")
    medians = {}
    for name in cases:
        loader, dev = medians[name] = [statistics.median(rates[(name, p)]) for p in ("loader", "device")]
        target = f">= {TARGET[name]:.0f}x {'met' if dev / loader >= TARGET[name] else 'NOT met'}" if name in TARGET else ""
        print(f"{name:28s} {loader:10.0f} {dev:10.0f} {dev / loader:7.1f}x  {target}")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": str(device), "batch": args.batch, "threads": args.threads, **{
            name: {"loader_img_per_s": loader, "device_img_per_s": dev, "ratio": dev / loader}
            for name, (loader, dev) in medians.items()}}, indent=2) + "\n")


if __name__ == "__main__":
    main()
