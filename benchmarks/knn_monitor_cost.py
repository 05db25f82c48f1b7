"""Cost of the online k-NN monitor (train.knn_*) against the digits preset's pretraining, side by side.

Times the second pretraining epoch of a digits recipe (monitor off; the first carries the start-up), then the monitor at its default sizes:
building it (decoding its images, once per run) and `measure` (median of 3). Prints the share of a
whole digits-preset run that the default schedule costs.

    python benchmarks/knn_monitor_cost.py [--recipe u-mae] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from mimreg.config import load_config
from mimreg.engine.loop import pretrain
from mimreg.engine.metrics import read_metrics
from mimreg.eval.frozen import load_encoder
from mimreg.engine.knn_monitor import KnnMonitor


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="u-mae")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    preset = load_config(f"digits/{args.recipe}")  # the run the monitor is sized for
    with tempfile.TemporaryDirectory() as folder:
        cfg = load_config(f"digits/{args.recipe}", ["train.epochs=2", "train.knn_every=0", "train.progress=false",
                                                     "train.device=cpu"])
        result = pretrain(cfg, Path(folder) / "run")
        ends = [r["time"] for r in read_metrics(Path(folder) / "run" / "metrics.jsonl") if r.get("kind") == "epoch"]
        epoch = ends[1] - ends[0]
        encoder, _, _ = load_encoder(result.checkpoint)
    began = time.perf_counter()
    monitor = KnnMonitor.from_config(preset, "cpu")
    build = time.perf_counter() - began
    times = []
    for _ in range(3):
        began = time.perf_counter()
        top1 = monitor.measure(encoder)["knn/top1"]
        times.append(time.perf_counter() - began)
    measure = statistics.median(times)
    epochs = preset.train.epochs
    count = sum(monitor.due(e) for e in range(1, epochs + 1))
    share = (build + count * measure) / (epochs * epoch)
    print(f"digits/{args.recipe}, {args.threads} thread(s): one pretraining epoch {epoch:.2f} s")
    print(f"monitor: bank {len(monitor.bank_labels)}, queries {len(monitor.query_labels)}, every {monitor.every} "
          f"epochs -> {count} measurements in {epochs} epochs; build {build:.2f} s, measure {measure:.2f} s "
          f"({measure / epoch:.1%} of an epoch; knn/top1 {top1:.1f} after 2 epochs)")
    print(f"cost of the default monitor: {share:.2%} of a {epochs}-epoch digits-preset run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
