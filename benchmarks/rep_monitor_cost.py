"""Cost of the representation monitor (train.rep_monitor_*) against training steps at the cifar10-cpu shape.

Builds a digits recipe at the cifar10-cpu preset's shape (vit_micro/4, 32 px, batch 256), times
training steps and one `measure` (RankMe + alpha-ReQ of cls, mean and, for joint methods, the
projector output) of `--images` held-out images (random pixels: the cost does not depend on them),
interleaved, medians of `--repeats`. Prints one measurement in training steps, and the share of the
cifar10-cpu run (12 epochs x 78 steps = 936) that the default schedule costs (every 200 steps and
after the last: 5 measurements).

    python benchmarks/rep_monitor_cost.py [--recipe mae] [--images 512] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from mimreg.config import TrainConfig, load_config
from mimreg.engine.loop import Trainer
from mimreg.engine.pretrain_task import PretrainTask
from mimreg.engine.rep_monitor import RepMonitor

CIFAR10_CPU_STEPS = 12 * (20_000 // 256)  # the preset's 12 epochs of its 20k-image subset


class NoWriter:
    def write(self, record: dict) -> None:
        pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="mae")
    parser.add_argument("--images", type=int, default=TrainConfig().rep_monitor_images)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(f"digits/{args.recipe}", ["optim.batch_size=256", "train.device=cpu", "train.progress=false",
                                                "train.knn_every=0", "train.rep_monitor_every=0"])
    device = torch.device("cpu")
    task = PretrainTask(cfg, device)
    trainer = Trainer(task, device)
    monitor = RepMonitor(torch.randn(args.images, 3, cfg.img_size, cfg.img_size), every=1, split="test")
    batch = next(iter(task.data.loader(0, 0, 0, False)))
    steps, measures = [], []
    for _ in range(args.repeats + 1):  # the first round warms up
        began = time.perf_counter()
        trainer.set_schedule()
        trainer.forward_backward(batch, 0, 0, NoWriter())
        trainer.optimizer_step()
        steps.append(time.perf_counter() - began)
        began = time.perf_counter()
        monitor.measure(task.module.method)
        measures.append(time.perf_counter() - began)
    step, measure = statistics.median(steps[1:]), statistics.median(measures[1:])
    every = TrainConfig().rep_monitor_every
    count = CIFAR10_CPU_STEPS // every + (CIFAR10_CPU_STEPS % every != 0)
    print(f"{args.recipe}, {args.threads} thread(s): training step (batch 256) {step * 1000:.0f} ms; one measurement "
          f"({args.images} images) {measure * 1000:.0f} ms = {measure / step:.2f} steps; default schedule (every "
          f"{every} steps + the last: {count} in the cifar10-cpu run's {CIFAR10_CPU_STEPS} steps) = "
          f"{100 * count * measure / (CIFAR10_CPU_STEPS * step):.2f}% of its training steps")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
