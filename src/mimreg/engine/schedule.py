"""Optimizer and learning-rate schedule with MAE's defaults."""

from __future__ import annotations

import math

import torch
from timm.optim import param_groups_weight_decay
from torch import nn

from mimreg.config import OptimConfig


def learning_rate(cfg: OptimConfig, world: int) -> float:
    """Absolute lr: `lr` if set, else blr * effective_batch / 256 (MAE's scaling rule)."""
    return cfg.lr_in_force(world)


def lr_key(cfg: OptimConfig) -> str:
    """The key whose value sets the lr: `optim.lr` or `optim.blr` (a loaded config sets one)."""
    return "optim.lr" if cfg.lr is not None else "optim.blr"


def lr_source(cfg: OptimConfig, world: int) -> str:
    """How the lr in force comes about, e.g. `optim.lr=0.001`, or
    `optim.blr=0.001 x 128 (batch) x 1 (accum) x 1 (world) / 256 = 0.0005`."""
    return cfg.lr_source(world)


def lr_hint(cfg: OptimConfig) -> str:
    """The advice for a diverging run, naming the key in force, e.g. `a lower optim.lr (now 0.001)`."""
    value = cfg.lr if cfg.lr is not None else cfg.blr
    return f"a lower {lr_key(cfg)} (now {value:g})"


def lr_at(step: int, *, base_lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Linear warmup then half-cosine decay to min_lr, per optimizer step."""
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """timm's `param_groups_weight_decay`: no weight decay on 1-D parameters and biases, nor on the
    names every submodule lists in its `no_weight_decay()` (timm's ViT: cls token and positions; MAE's
    decoder and SimMIM: the mask token; MSN: the prototypes). Frozen parameters are left out."""
    skip = {f"{prefix}.{name}" if prefix else name
            for prefix, module in model.named_modules() if callable(getattr(module, "no_weight_decay", None))
            for name in module.no_weight_decay()}
    # asked with a decay of 1 and sorted by the decay it got: timm releases differ in which groups they
    # return (empty ones, a zero decay putting everything in one group), and a decay schedule that
    # starts at 0 (MSN's) must still find the decayed parameters
    groups = param_groups_weight_decay(model, 1.0, no_weight_decay_list=skip)
    decay = [p for g in groups if g["weight_decay"] > 0 for p in g["params"]]
    no_decay = [p for g in groups if g["weight_decay"] == 0 for p in g["params"]]
    return [{"params": decay, "weight_decay": weight_decay, "decay": True},
            {"params": no_decay, "weight_decay": 0.0, "decay": False}]


def weight_decay_at(step: int, *, start: float, end: float | None, total_steps: int) -> float:
    """Constant `start`, or a half-cosine from `start` to `end` (MSN: 0.04 -> 0.4), per step."""
    if end is None:
        return start
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, step / max(1, total_steps))))


def set_weight_decay(optimizer: torch.optim.Optimizer, weight_decay: float) -> None:
    for group in optimizer.param_groups:
        if group.get("decay", True):
            group["weight_decay"] = weight_decay


def build_optimizer(groups: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    """`optim.name`'s optimizer over `groups`: AdamW, fused (on CPU the default per-parameter loop
    costs seconds per step for a ViT-Tiny), or LARS."""
    if cfg.name == "lars":
        return build_lars(groups, cfg)
    return torch.optim.AdamW(groups, lr=0.0, betas=tuple(cfg.setting("betas")), fused=True)


def build_lars(groups: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    """timm's Lars with solo-learn's `exclude_bias_n_norm`: the parameters without weight decay
    (biases, norms, tokens) take a plain momentum-SGD step. timm adapts a group only where its
    decay is not 0, or with `always_adapt`: set on the decayed group, so that it stays adapted while
    a decay schedule (or optim.weight_decay) is at 0, and left off on the other, which never decays."""
    from timm.optim import Lars

    groups = [{**group, "always_adapt": group.get("decay", group["weight_decay"] > 0)} for group in groups]
    return Lars(groups, lr=0.0, momentum=cfg.setting("momentum"), trust_coeff=cfg.setting("lars_eta"),
                trust_clip=cfg.setting("lars_clip"))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """The scheduled lr, times each group's `lr_scale` (layer decay) where it has one."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
