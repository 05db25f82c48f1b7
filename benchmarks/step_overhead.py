"""Pretraining step time of MAE, U-MAE, M-MAE and MU-MAE, measured side by side in one run.

ViT-Tiny/4 at 32x32, batch 256, on CPU (or --device cuda). Rounds are interleaved so that machine
noise hits every recipe alike; the median step time of each recipe is reported as a ratio to MAE.
Also reports the MAE step's achieved GFLOP/s as a fraction of an fp32 matmul peak measured here.

    python benchmarks/step_overhead.py [--batch 256] [--rounds 5] [--arch vit_tiny] [--compile]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from mimreg.config import load_config
from mimreg.engine.build import build_trainee
from mimreg.engine.schedule import build_optimizer

RECIPES = ("mae", "u-mae", "m-mae", "mu-mae")
TARGETS = {"u-mae": 1.02, "m-mae": 1.03, "mu-mae": 1.04}


def make_step(recipe: str, args):
    sets = [f"model.arch={args.arch}", "data.name=synthetic", "train.online_probe=false",
            f"train.compile={str(args.compile).lower()}"]
    cfg = load_config(f"cifar10/{recipe}", sets)
    for reg in cfg.regularizers:  # measure every regularizer while it is switched on
        reg.start_epoch, reg.duration = 0, None
    torch.manual_seed(0)
    trainee = build_trainee(cfg).to(args.device)
    if args.compile:
        for block in trainee.method.encoder.vit.blocks:
            block.compile()
    optimizer = build_optimizer(trainee, cfg.optim)
    images = torch.randn(args.batch, 3, 32, 32, device=args.device)

    def step():
        result = trainee(images, epoch=0)
        result.total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    return step, trainee, images


def matmul_peak_gflops(device: str, n: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    for _ in range(2):
        a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per recipe per round")
    parser.add_argument("--arch", default="vit_tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()

    steps = {r: make_step(r, args) for r in RECIPES}
    for step, _, _ in steps.values():  # warm-up (and compile)
        step()
    times: dict[str, list[float]] = {r: [] for r in RECIPES}
    for _ in range(args.rounds):
        for recipe, (step, _, _) in steps.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            times[recipe].append((time.perf_counter() - start) / args.steps)

    _, trainee, images = steps["mae"]
    with FlopCounterMode(display=False) as counter:
        trainee(images, epoch=0).total.backward()
    flops = counter.get_total_flops()
    peak = matmul_peak_gflops(args.device)
    mae_time = statistics.median(times["mae"])

    print(f"device {args.device}, threads {torch.get_num_threads()}, {args.arch}/4 at 32x32, batch {args.batch}, "
          f"{args.rounds} interleaved rounds x {args.steps} steps, compile={args.compile}")
    print(f"{'recipe':<8} {'median s/step':>13} {'ratio to MAE':>13} {'target':>7}")
    for recipe in RECIPES:
        median = statistics.median(times[recipe])
        target = f"<= {TARGETS[recipe]:.2f}" if recipe in TARGETS else ""
        print(f"{recipe:<8} {median:>13.3f} {median / mae_time:>13.3f} {target:>7}")
    achieved = flops / mae_time / 1e9
    print(f"MAE step: {flops / 1e9:.1f} GFLOP (fwd+bwd), {achieved:.1f} GFLOP/s; fp32 matmul peak {peak:.1f} GFLOP/s; "
          f"fraction {achieved / peak:.2f} (target >= 0.6)")


if __name__ == "__main__":
    main()
