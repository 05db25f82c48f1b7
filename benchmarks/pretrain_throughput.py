"""End-to-end MAE pretraining throughput: `mimreg pretrain` on a CIFAR-10-sized set of synthetic uint8
images through the device data pipeline, stopped by SIGTERM after a time budget.

The images are written once as CIFAR-10's python pickles (50,000 train, 10,000 test by default; the
procedural stripes of the `synthetic` dataset, so the loss falls as on a real set) and read by the
ordinary `cifar10` dataset. The run trains ViT-Tiny/4 MAE (the cifar10 preset, 800 epochs of schedule)
until --seconds have passed (and one step was logged), when SIGTERM stops it after the current step with a checkpoint, as a
preemption would. From the run's metrics.jsonl: img/s end to end (every step over the whole call,
start-up and the first epoch's warm-up included), img/s after the first epoch, epochs per minute, and
the peak GPU memory. One JSON object goes to --json.

    python benchmarks/pretrain_throughput.py --work DIR --json OUT.json [--seconds 180] [--device cuda]
        [--train-images 50000] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import signal
import threading
import time
from pathlib import Path

import numpy as np
import torch

from mimreg.cli import main as mimreg_main
from mimreg.data.synthetic import generate

CHUNK = 10_000  # images per pickle (CIFAR-10's batch files hold 10,000 each)


def write_fake_cifar10(root: Path, train_images: int, test_images: int) -> Path:
    """CIFAR-10's folder layout (cifar-10-batches-py) with synthetic images; reused when present."""
    folder = root / "cifar-10-batches-py"
    if (folder / "batches.meta").is_file():
        return root
    folder.mkdir(parents=True, exist_ok=True)
    per_file = -(-train_images // 5)
    files = [(f"data_batch_{i + 1}", min(per_file, train_images - i * per_file), 10 + i) for i in range(5)]
    for name, count, seed in files + [("test_batch", test_images, 99)]:
        rows, labels = [], []
        for start in range(0, max(count, 0), CHUNK):
            images, chunk_labels = generate(min(CHUNK, count - start), seed * 1000 + start)
            rows.append(images.transpose(0, 3, 1, 2).reshape(len(images), -1))  # channel-major rows
            labels += chunk_labels.tolist()
        data = np.concatenate(rows) if rows else np.zeros((0, 3072), np.uint8)
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": labels}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"pattern{k}" for k in range(10)]}, f)
    return root


def stop_after(seconds: float, metrics: Path, done: threading.Event) -> None:
    """SIGTERM this process after `seconds`, but not before the first step is logged: the run's
    handler, which turns SIGTERM into a checkpoint and a clean stop, is installed by then."""
    if done.wait(seconds):
        return
    while not done.is_set() and '"kind": "train"' not in (metrics.read_text() if metrics.is_file() else ""):
        done.wait(0.2)
    if not done.is_set():
        os.kill(os.getpid(), signal.SIGTERM)


def summarise(run: Path, wall: float, batch: int, device: str) -> dict:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    start = next(r for r in records if r["kind"] == "start")
    train = [r for r in records if r["kind"] == "train"]
    per_epoch = start["steps_per_epoch"]
    steps = train[-1]["step"] if train else 0
    later = [r for r in train if r["step"] > per_epoch]  # after the first epoch (warm-up, compilation)
    steady = (batch * (later[-1]["step"] - later[0]["step"]) / (later[-1]["time"] - later[0]["time"])
              if len(later) > 1 and later[-1]["time"] > later[0]["time"] else None)
    train_time = train[-1]["time"] if train else 0.0
    return {
        "device": device, "images_per_epoch": start["images"], "batch": batch, "steps": steps,
        "epochs_done": steps / per_epoch, "wall_s": round(wall, 2), "train_s": train_time,
        "img_per_s_end_to_end": batch * steps / wall if wall else None,
        "img_per_s_after_first_epoch": steady,
        "epochs_per_minute": 60 * steps / per_epoch / train_time if train_time else None,
        "first_loss": train[0]["loss"] if train else None, "last_loss": train[-1]["loss"] if train else None,
        "peak_gpu_memory_gb": torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None,
    }


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", required=True, help="folder for the images and the run")
    parser.add_argument("--json", required=True, help="where the summary goes")
    parser.add_argument("--seconds", type=float, default=180.0, help="SIGTERM after this long")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--train-images", type=int, default=50_000)
    parser.add_argument("--test-images", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--set", action="append", default=[], help="more config settings (KEY=VALUE)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    work = Path(args.work)
    root = write_fake_cifar10(work / "data", args.train_images, args.test_images)
    sets = [f"data.root={root}", "data.pipeline=device", f"train.device={args.device}",
            f"optim.batch_size={args.batch}", "train.progress=false", "train.log_every=1", *args.set]
    run = work / "run"
    done = threading.Event()
    threading.Thread(target=stop_after, args=(args.seconds, run / "metrics.jsonl", done), daemon=True).start()
    start = time.perf_counter()
    try:
        code = mimreg_main(["pretrain", "cifar10/mae", "--out", str(run)] + [a for s in sets for a in ("--set", s)])
    finally:
        done.set()
    wall = time.perf_counter() - start
    summary = {"exit_code": code, "stopped_by_time": code == 128 + signal.SIGTERM, "settings": sets,
               **summarise(run, wall, args.batch, args.device)}
    Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0 if code in (0, 128 + signal.SIGTERM) else code


if __name__ == "__main__":
    raise SystemExit(main())
