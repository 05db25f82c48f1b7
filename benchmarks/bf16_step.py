"""bf16 autocast vs fp32 on CPU: one MAE pretraining step side by side, and where the bf16 step's time goes.

Builds the trainee and optimizer of a recipe as the engine does, then times forward + backward +
optimizer step in three variants, interleaved round by round so that machine noise hits all alike:
fp32; bf16 as the engine runs it (`train.precision: bf16`: autocast, attention on torch's math
path); and bf16-fused, plain torch.autocast(cpu, bfloat16) with torch's fused (flash) attention
kernel, the engine's bf16 before it avoided that kernel. Reports the medians and their ratios to
fp32. Also times bare fp32 and bf16 matmuls of the step's sizes (the best the hardware gives), and
with --profile VARIANT prints that step's operators by self CPU time.

    python benchmarks/bf16_step.py [--recipe cifar10-cpu/mae] [--threads 1] [--rounds 7] [--profile bf16]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

from mimreg.config import load_config
from mimreg.engine.build import build_trainee
from mimreg.engine.loop import _autocast
from mimreg.engine.schedule import build_optimizer, param_groups, set_lr

VARIANTS = ("fp32", "bf16", "bf16-fused")


def autocast(variant: str):
    """The context of the variant's forward: the engine's for fp32 and bf16."""
    if variant == "bf16-fused":
        return torch.autocast(device_type="cpu", dtype=torch.bfloat16)
    return _autocast(variant, torch.device("cpu"))()


def make_step(recipe: str, variant: str, batch: int, sets: list[str]):
    """A closure running one training step of `recipe` (same seed, so all variants start alike)."""
    cfg = load_config(recipe, ["data.name=synthetic", "data.img_size=32", "train.online_probe=false", *sets])
    torch.manual_seed(0)
    trainee = build_trainee(cfg)
    optimizer = build_optimizer(param_groups(trainee, cfg.optim.weight_decay), cfg.optim)
    set_lr(optimizer, 1e-4)  # a non-zero lr (presets may give blr instead): the update runs, its size does not matter here
    images = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    generator = torch.Generator()

    def step():
        generator.manual_seed(2)
        with autocast(variant):
            result = trainee(images, epoch=0, generator=generator)
        result.total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return result.total.detach()

    return step, cfg


def matmul_ms(m: int, k: int, n: int, dtype: torch.dtype, repeats: int = 20) -> float:
    """Median ms of one (m, k) @ (k, n) matmul in `dtype` (inputs already in that dtype)."""
    a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def matmul_table(cfg, batch: int) -> None:
    """fp32 vs bf16 time of the encoder's and decoder's Linear shapes (forward), and a large square one."""
    from mimreg.models.vit import VIT_ARCHS as ARCHS
    dim = ARCHS[cfg.model.arch][0]
    grid = 32 // cfg.model.patch_size
    visible = int(grid * grid * (1 - cfg.method.options.mask_ratio)) + 1
    ddim = cfg.method.options.decoder_dim
    shapes = {"enc qkv": (batch * visible, dim, 3 * dim), "enc fc1": (batch * visible, dim, 4 * dim),
              "enc fc2": (batch * visible, 4 * dim, dim), "dec fc1": (batch * (grid * grid + 1), ddim, 4 * ddim),
              "square 2048": (2048, 2048, 2048)}
    print(f"{'matmul (m, k, n)':<32} {'fp32 ms':>8} {'bf16 ms':>8} {'fp32/bf16':>9}")
    for name, (m, k, n) in shapes.items():
        pairs = [(matmul_ms(m, k, n, torch.float32), matmul_ms(m, k, n, torch.bfloat16)) for _ in range(3)]
        f32, b16 = statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)
        print(f"{name + f' {(m, k, n)}':<32} {f32:>8.3f} {b16:>8.3f} {f32 / b16:>9.2f}")


def time_steps(steps: dict, rounds: int, per_round: int) -> dict[str, list[float]]:
    for step in steps.values():  # warm-up: oneDNN primitive creation, allocator
        step(), step()
    times: dict[str, list[float]] = {p: [] for p in steps}
    for r in range(rounds):
        order = list(steps) if r % 2 == 0 else list(steps)[::-1]  # alternate who goes first
        for variant in order:
            start = time.perf_counter()
            for _ in range(per_round):
                steps[variant]()
            times[variant].append((time.perf_counter() - start) / per_round)
    return times


def profile_step(step, variant: str, rows: int) -> None:
    step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
        for _ in range(3):
            step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    print(f"{variant} step profile, 3 steps, {total / 3e3:.1f} ms/step of self CPU time; top operators:")
    print(f"{'operator':<44} {'self ms/step':>12} {'share':>6} {'calls/step':>10}")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:rows]:
        print(f"{e.key[:44]:<44} {e.self_cpu_time_total / 3e3:>12.2f} {e.self_cpu_time_total / total:>6.1%} "
              f"{e.count / 3:>10.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="cifar10-cpu/mae")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per variant per round")
    parser.add_argument("--set", action="append", default=[], help="extra config override, e.g. model.arch=vit_tiny")
    parser.add_argument("--profile", choices=VARIANTS, help="also profile this variant's step by operator")
    parser.add_argument("--rows", type=int, default=25)
    parser.add_argument("--no-matmul", action="store_true")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    built = {v: make_step(args.recipe, v, args.batch, args.set) for v in VARIANTS}
    cfg = built["fp32"][1]
    print(f"{args.recipe} {' '.join(args.set)}: {cfg.model.arch}/{cfg.model.patch_size} at 32x32, batch {args.batch}, "
          f"threads {torch.get_num_threads()}, torch {torch.__version__}, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, AMX tiles {torch.cpu._is_amx_tile_supported()}")
    if not args.no_matmul:
        matmul_table(cfg, args.batch)
    times = time_steps({p: s for p, (s, _) in built.items()}, args.rounds, args.steps)
    med = {p: statistics.median(t) for p, t in times.items()}
    print(f"step (fwd+bwd+AdamW), {args.rounds} interleaved rounds x {args.steps} steps:")
    for v in VARIANTS:
        print(f"  {v:<10}: median {1e3 * med[v]:7.1f} ms/step, fp32/{v} {med['fp32'] / med[v]:.2f}  "
              f"(rounds: {' '.join(f'{1e3 * t:.0f}' for t in times[v])})")
    print("  (fp32/variant > 1: the variant is faster than fp32)")
    if args.profile:
        profile_step(built[args.profile][0], args.profile, args.rows)


if __name__ == "__main__":
    main()
