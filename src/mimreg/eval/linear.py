"""Linear probe on frozen features: a converging default (`sweep`) and the papers' fixed recipes.

* `sweep` (default): features standardised with the training statistics; one head per
  (lr, weight decay) of a small grid trained in one pass (SGD, momentum 0.9, cosine to 0);
  the setting with the best accuracy on a stratified held-out part of the TRAIN split is refit
  on the whole train split. The test split is never looked at before the final score.
* `magma`: MAGMA's protocol on raw features (SGD lr 0.1, x0.1 at epochs 60 and 80, 100 epochs).
* `mae`: the same optimisation behind MAE's parameter-free BatchNorm (U-MAE, MI-MAE use MAE's probe).
"""

from __future__ import annotations

import math
import sys
from typing import Callable

import torch

from mimreg.errors import MimregError
from mimreg.feature_checks import check_split
from mimreg.eval.heads import LinearHeads
from mimreg.eval.splits import held_out_split

PROTOCOLS = ("sweep", "magma", "mae")
# SGD on standardised features: DINOv2 sweeps 13 lrs over four decades on raw features; on unit-variance
# inputs a factor ~3 grid over 1e-3..1 holds the best lr of every feature set we tried.
SWEEP_LRS = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
SWEEP_WEIGHT_DECAYS = (0.0, 1e-4, 1e-3)


def _lr_at(epoch: int, lr: float, milestones, gamma: float) -> float:
    return lr * gamma ** sum(epoch >= m for m in milestones)


def _train(heads: LinearHeads, x: torch.Tensor, y: torch.Tensor, *, epochs: int, batch_size: int,
           lr_scale: Callable[[int, int], float], generator: torch.Generator, min_batch: int,
           progress: str | None) -> torch.Tensor:
    """Mini-batch SGD, reshuffled every epoch from `generator`; `lr_scale(epoch, step)` multiplies
    every head's lr. Returns each head's mean training loss over the last epoch (H,)."""
    n = x.shape[0]
    step = 0
    for epoch in range(epochs):
        order = torch.randperm(n, generator=generator).to(x.device)
        loss_sum = torch.zeros(heads.num_heads, device=x.device)
        seen = 0
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            if idx.numel() < min_batch:
                continue  # batch statistics of one sample are undefined
            loss_sum += heads.train_step(x[idx], y[idx], lr_scale(epoch, step))  # summed on-device: no host sync
            seen += idx.numel()
            step += 1
        if progress and (epoch % 10 == 9 or epoch == epochs - 1):
            print(f"{progress} epoch {epoch + 1}/{epochs} loss {float(loss_sum.min()) / seen:.4f} "
                  f"(best head)", file=sys.stderr, flush=True)
    return loss_sum / max(seen, 1)


def _feature_stats(fit_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of `fit_x`; a constant dimension keeps scale 1 (sklearn's StandardScaler rule),
    so it stays 0 on the fit rows instead of dividing by zero."""
    std = fit_x.std(dim=0, unbiased=False)
    return fit_x.mean(dim=0), torch.where(std > 0, std, torch.ones_like(std))


def _standardise(fit_x: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """Centre and scale by the mean and std of `fit_x`."""
    mean, std = _feature_stats(fit_x)
    return [(x - mean) / std for x in (fit_x, *others)]


def _cosine(total_steps: int) -> Callable[[int, int], float]:
    return lambda epoch, step: 0.5 * (1.0 + math.cos(math.pi * step / max(1, total_steps)))


def _steps(n: int, batch_size: int, epochs: int) -> int:
    return epochs * math.ceil(n / batch_size)


def _scores(heads: LinearHeads, train, test, num_classes: int) -> dict:
    k = min(5, num_classes)
    on_test = heads.evaluate(*test, k=k)
    on_train = heads.evaluate(*train)
    result = {"top1": float(on_test["top1"][0]), "train_top1": float(on_train["top1"][0]),
              "train_loss": float(on_train["loss"][0])}
    if num_classes >= 5:
        result["top5"] = float(on_test["topk"][0])
    return result


def sweep_probe(train_x, train_y, test_x, test_y, *, epochs: int = 100, batch_size: int = 256,
                lrs=SWEEP_LRS, weight_decays=SWEEP_WEIGHT_DECAYS, momentum: float = 0.9, held_out: float = 0.1,
                seed: int = 0, device: str = "cpu", progress: bool = False, keep_head: bool = False) -> dict:
    """The default probe (module docstring). Returns top1, top5 (5+ classes), train_top1 and
    train_loss (cross-entropy of the final head on the whole train split), heldout_top1 of the
    chosen setting, lr, weight_decay, the grid's held-out accuracies, epochs, protocol, num_classes.
    Ties on held-out accuracy go to the lower held-out loss. `keep_head`: also "head", the final
    head on the raw features (the standardisation folded in): weight (C, D), bias (C,)."""
    train_x, train_y, test_x, test_y, num_classes = check_split(train_x, train_y, test_x, test_y)
    if not 0 < held_out < 1:
        raise MimregError(f"held_out must lie in (0, 1), got {held_out}; 0.1 holds out 10% of each class")
    if not lrs or not weight_decays or min(lrs) <= 0 or min(weight_decays) < 0:
        raise MimregError(f"lrs must be positive and weight_decays non-negative, got {lrs} and {weight_decays}")
    fit, held = held_out_split(train_y.numpy(), held_out, seed)
    if held.size == 0:
        raise MimregError("no class has two training rows to hold one out; pass more training features")
    dev = torch.device(device)
    grid = [(lr, wd) for lr in lrs for wd in weight_decays]
    generator = torch.Generator().manual_seed(seed)  # CPU: init and shuffling identical on any device
    fit_x, held_x = (t.to(dev) for t in _standardise(train_x[fit], train_x[held]))
    fit_y, held_y = train_y[fit].to(dev), train_y[held].to(dev)
    heads = LinearHeads(train_x.shape[1], num_classes, [g[0] for g in grid], [g[1] for g in grid], momentum=momentum,
                        batch_norm=False, generator=generator, device=dev)
    _train(heads, fit_x, fit_y, epochs=epochs, batch_size=batch_size, generator=generator, min_batch=1,
           lr_scale=_cosine(_steps(len(fit), batch_size, epochs)), progress="linear sweep" if progress else None)
    scores = heads.evaluate(held_x, held_y)
    best = max(range(len(grid)), key=lambda h: (float(scores["top1"][h]), -float(scores["loss"][h])))
    lr, wd = grid[best]

    # Refit on the whole train split: the held-out rows were only needed to choose the setting.
    all_x, test_xs = (t.to(dev) for t in _standardise(train_x, test_x))
    final = LinearHeads(train_x.shape[1], num_classes, [lr], [wd], momentum=momentum, batch_norm=False,
                        generator=generator, device=dev)
    _train(final, all_x, train_y.to(dev), epochs=epochs, batch_size=batch_size, generator=generator, min_batch=1,
           lr_scale=_cosine(_steps(len(train_y), batch_size, epochs)), progress="linear refit" if progress else None)
    result = _scores(final, (all_x, train_y.to(dev)), (test_xs, test_y.to(dev)), num_classes)
    if keep_head:
        result["head"] = _raw_feature_head(final.weight[0], final.bias[0], *_feature_stats(train_x))
    return {**result, "heldout_top1": float(scores["top1"][best]), "lr": lr, "weight_decay": wd,
            "grid": [{"lr": g[0], "weight_decay": g[1], "heldout_top1": float(scores["top1"][h])}
                     for h, g in enumerate(grid)],
            "heldout_images": int(held.size), "epochs": epochs, "protocol": "sweep", "num_classes": num_classes}


def _raw_feature_head(weight, bias, mean, std) -> dict:
    """W (x - mu) / sigma + b as W' x + b' on raw features x."""
    folded = weight / std.to(weight)
    return {"weight": folded.cpu(), "bias": (bias - folded @ mean.to(weight)).cpu()}


def linear_probe(train_x, train_y, test_x, test_y, *, protocol: str = "sweep", epochs: int = 100,
                 lr: float = 0.1, momentum: float = 0.9, milestones=(60, 80), gamma: float = 0.1,
                 batch_size: int = 256, weight_decay: float = 0.0, seed: int = 0, device: str = "cpu",
                 progress: bool = False, **sweep_options) -> dict:
    """Train a linear classifier on frozen (N, D) features; report accuracies in percent.

    `protocol="sweep"` (default): see `sweep_probe` (lr, milestones, gamma and weight_decay do not
    apply; `sweep_options` go to it). `protocol="magma"`: a plain linear layer on the raw features.
    `protocol="mae"`: BatchNorm1d(D, affine=False, eps=1e-6) before the linear layer, as in MAE's
    linear probe; it runs in eval mode (running statistics) when scoring. Both fixed recipes
    multiply the lr by `gamma` at each epoch index in `milestones` (0-based, like MultiStepLR
    stepped per epoch). Mini-batches are reshuffled every epoch from a generator seeded with
    `seed`; the last, smaller batch is kept, except a single leftover sample under "mae".

    Fixed recipes return top1, top5 (only with 5 or more classes), train_top1, train_loss (mean
    over the last epoch), epochs, protocol and num_classes (max train label + 1).
    """
    if protocol not in PROTOCOLS:
        raise MimregError(f"unknown linear-probe protocol {protocol!r}; use one of {PROTOCOLS}")
    if epochs < 1 or batch_size < 1:
        raise MimregError(f"epochs ({epochs}) and batch_size ({batch_size}) must be at least 1")
    if protocol == "sweep":
        return sweep_probe(train_x, train_y, test_x, test_y, epochs=epochs, batch_size=batch_size, momentum=momentum,
                           seed=seed, device=device, progress=progress, **sweep_options)
    if sweep_options:
        raise MimregError(f"{sorted(sweep_options)} only apply to protocol 'sweep', not {protocol!r}")
    if not (lr > 0 and math.isfinite(lr)):
        raise MimregError(f"lr must be a positive number, got {lr}")
    train_x, train_y, test_x, test_y, num_classes = check_split(train_x, train_y, test_x, test_y)
    if protocol == "mae" and train_x.shape[0] < 2:
        raise MimregError("the 'mae' protocol needs at least 2 training rows for BatchNorm; use protocol='magma'")

    dev = torch.device(device)
    generator = torch.Generator().manual_seed(seed)
    heads = LinearHeads(train_x.shape[1], num_classes, [lr], [weight_decay], momentum=momentum,
                        batch_norm=protocol == "mae", generator=generator, device=dev)
    x, y = train_x.to(dev), train_y.to(dev)
    last_loss = _train(heads, x, y, epochs=epochs, batch_size=batch_size, generator=generator,
                       min_batch=2 if protocol == "mae" else 1, progress=f"linear_probe[{protocol}]" if progress else None,
                       lr_scale=lambda epoch, step: _lr_at(epoch, 1.0, milestones, gamma))
    result = _scores(heads, (x, y), (test_x.to(dev), test_y.to(dev)), num_classes)
    result["train_loss"] = float(last_loss[0])
    return {**result, "epochs": epochs, "protocol": protocol, "num_classes": num_classes}
