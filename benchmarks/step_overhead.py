"""Pretraining step time of every recipe, side by side in one run, as a ratio to its base method.

ViT-Tiny/4 at 32x32, batch 256, on CPU (or --device cuda). Rounds are interleaved so that machine
noise hits every recipe alike; the median step time of each recipe is reported as a ratio to the
base recipe of its group (MI-MAE's base is MAE with the same 4 masked views per image), with the
cost of the recipe's regularizers timed alone on one step's features (a ratio that does not drown in
the step-to-step noise of the whole step). Also reports
the MAE step's achieved GFLOP/s as a fraction of an fp32 matmul peak measured in the same run.

    python benchmarks/step_overhead.py [--groups mae,joint,mim,msn,beyond-mae,beyond-simclr,lejepa] [--batch 256] [--rounds 5] [--compile]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from mimreg.config import load_config
from mimreg.engine.build import build_trainee
from mimreg.engine.schedule import build_optimizer, param_groups

# group -> (base recipe, its variants); "mae-x4" is MAE with MI-MAE's 4 masked views per image
GROUPS = {
    "mae": ("mae", ["u-mae", "m-mae", "mu-mae"]),
    "mi-mae": ("mae-x4", ["mi-mae"]),
    "joint": (None, [("simclr", "m-simclr"), ("vicreg", "m-vicreg"), ("byol", "byol+t-regs"),
                     ("barlow", "barlow+t-regs"), ("mse", "mse+t-regs")]),
    "mim": ("simmim", ["u-simmim"]),
    "msn": ("msn", []),
    # issue 17: the regularizers beyond the seeds on MAE and SimCLR, and LeJEPA with KoLeo
    "beyond-mae": ("mae", ["mae+koleo", "mae+vcreg", "mae+coding-rate", "mae+visreg", "mae+sigreg"]),
    "beyond-simclr": ("simclr", ["simclr+koleo", "simclr+vcreg", "simclr+coding-rate", "simclr+visreg",
                                 "simclr+sigreg", "simclr+mmcr"]),
    "lejepa": ("lejepa", ["lejepa+koleo"]),
}
TARGETS = {"u-mae": 1.02, "m-mae": 1.03, "mu-mae": 1.04, "mi-mae": 1.10, "byol+t-regs": 1.05,
           "barlow+t-regs": 1.05, "mse+t-regs": 1.05}


def pairs(groups: list[str]) -> list[tuple[str, str]]:
    """(recipe, base) for every recipe of the chosen groups; a base is its own base."""
    out = []
    for group in groups:
        base, variants = GROUPS[group]
        if base is None:
            for b, v in variants:
                out += [(b, b), (v, b)]
        else:
            out += [(base, base)] + [(v, base) for v in variants]
    return out


def make_step(recipe: str, args):
    sets = [f"model.arch={args.arch}", "data.name=synthetic", "train.online_probe=false",
            f"train.compile={str(args.compile).lower()}"]
    if recipe == "mae-x4":
        recipe, sets = "mae", sets + ["method.num_masks=4"]
    cfg = load_config(f"cifar10/{recipe}", sets)
    for reg in cfg.regularizers:  # measure every regularizer while it is switched on
        reg.start_epoch, reg.duration = 0, None
    torch.manual_seed(0)
    trainee = build_trainee(cfg).to(args.device)
    if args.compile:
        for block in trainee.method.encoder.vit.blocks:
            block.compile()
    optimizer = build_optimizer(param_groups(trainee, cfg.optim.weight_decay), cfg.optim)
    images = make_views(cfg, args)

    def step():
        result = trainee(images, epoch=0)
        result.total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    return step, trainee, images


def make_views(cfg, args):
    """A batch in the form the method takes: one tensor, or a list of views."""
    def batch(size):
        return torch.randn(args.batch, 3, size, size, device=args.device)
    if cfg.data.augmentation == "msn":
        return [batch(32), batch(32)] + [batch(16) for _ in range(cfg.data.focal_views)]
    return [batch(32) for _ in range(cfg.data.num_views)] if cfg.data.num_views > 1 else batch(32)


def matmul_peak_gflops(device: str, n: int = 2048, repeats: int = 5, trials: int = 5) -> float:
    """Best of `trials` timings of an n x n fp32 matmul: the peak this machine reaches now."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    for _ in range(2):
        a @ b
    best = 0.0
    for _ in range(trials):
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = max(best, 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9)
    return best


def isolated_regularizer_seconds(trainee, images, repeats: int = 20) -> float:
    """Median forward+backward time of the recipe's regularizers alone (their auxiliary losses
    included) on the features of one step, detached from the network: the part of the step
    overhead that does not drown in the step-to-step noise of the whole step. 0 without any."""
    if not trainee.regularizers:
        return 0.0
    with torch.no_grad():
        out = trainee.method(images, needs=trainee.needs(0, False))
    reads = {name for reg in trainee.regularizers for name in reg.reads()}
    features = {name: x.detach().requires_grad_(True) for name, x in out.features.items() if name in reads}
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        total = sum(reg(features) + (reg.auxiliary_loss(features) or 0) for reg in trainee.regularizers)
        total.backward()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per recipe per round")
    parser.add_argument("--arch", default="vit_tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--groups", default="mae", help=f"comma-separated, from {list(GROUPS)}")
    args = parser.parse_args()

    recipe_base = dict(pairs(args.groups.split(",")))
    RECIPES = list(recipe_base)
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

    peak = matmul_peak_gflops(args.device)
    medians = {r: statistics.median(t) for r, t in times.items()}

    print(f"device {args.device}, threads {torch.get_num_threads()}, {args.arch}/4 at 32x32, batch {args.batch}, "
          f"{args.rounds} interleaved rounds x {args.steps} steps, compile={args.compile}")
    print(f"{'recipe':<18} {'base':<8} {'median s/step':>13} {'ratio to base':>13} {'regs alone':>10} {'target':>8}")
    for recipe in RECIPES:
        base = recipe_base[recipe]
        target = f"<= {TARGETS[recipe]:.2f}" if recipe in TARGETS else ""
        _, trainee, images = steps[recipe]
        alone = 1 + isolated_regularizer_seconds(trainee, images) / medians[base]
        print(f"{recipe:<18} {base:<8} {medians[recipe]:>13.3f} {medians[recipe] / medians[base]:>13.3f} "
              f"{alone:>10.4f} {target:>8}")
    print("regs alone: 1 + (fwd+bwd time of the recipe's regularizers on one step's detached features) / "
          "base step time")
    if "mae" in steps:
        _, trainee, images = steps["mae"]
        with FlopCounterMode(display=False) as counter:
            trainee(images, epoch=0).total.backward()
        flops = counter.get_total_flops()
        achieved = flops / medians["mae"] / 1e9
        print(f"MAE step: {flops / 1e9:.1f} GFLOP (fwd+bwd), {achieved:.1f} GFLOP/s; fp32 matmul peak "
              f"{peak:.1f} GFLOP/s; fraction {achieved / peak:.2f} (target >= 0.6)")


if __name__ == "__main__":
    main()
