"""Linear probe on frozen features: a converged default (`sweep`) and the papers' fixed recipes.

* `sweep` (default): features standardised with the training statistics; multinomial logistic
  regression fit to convergence (full-batch L-BFGS, no learning rate), its L2 weight decay chosen
  from a log grid (1e-6 ... 1) by the out-of-fold accuracy of stratified 5-fold cross-validation
  on the TRAIN split (near-ties, within a quarter of a standard error: lower out-of-fold loss),
  then refit on the whole train split. Every train row is scored once, not a 10% split whose few
  hundred rows made the choice noisy. L-BFGS runs in the features' principal axes, scaled by the
  ridge (same objective, curvature near 1). A pick at the grid's edge warns (GridEdgeWarning).
  The test split is never looked at before the final score.
* `magma`: MAGMA's protocol on raw features (SGD lr 0.1, x0.1 at epochs 60 and 80, 100 epochs).
* `mae`: the same optimisation behind MAE's parameter-free BatchNorm (U-MAE, MI-MAE use MAE's probe).
* `lars`: MAE's ImageNet-1k recipe (paper appendix A.2, official main_linprobe.py): the same
  BatchNorm, LARS (timm), base lr 0.1 with lr = blr x batch / 256, batch 16384, no weight decay,
  90 epochs with 10 of linear warm-up then a half cosine to 0, per iteration; the last incomplete
  batch dropped. On stored features there is no augmentation beyond the eval transform (MAE's
  probe uses RandomResizedCrop + flip on images; features are computed once). A recipe for the
  papers' scale only: LARS moves the weight by lr x 1e-3 of its norm per step and lr grows with the
  batch, so what it learns grows with rows x epochs; on 600 rows of 6 separable blobs it stays near
  chance (10%) where `mae` reaches 100%, on 30000 rows it matches `mae`.

The SGD protocols (magma, mae, lars) can read the train features from a memory-mapped feature
store a mini-batch at a time (`stream=True`); `sweep` fits on the whole matrix in memory.
"""

from __future__ import annotations

import math
import sys
import warnings
from typing import Callable

import torch

from mimreg.errors import MimregError
from mimreg.feature_checks import check_split
from mimreg.eval.heads import LinearHeads
from mimreg.eval.logistic import cross_validate, fit_rotated, principal_axes, scores, solver_dtype

PROTOCOLS = ("sweep", "magma", "mae", "lars")
# MAE's linear probe on ImageNet-1k (main_linprobe.py defaults and the paper's Table 9).
LARS_RECIPE = {"blr": 0.1, "batch_size": 16384, "epochs": 90, "warmup_epochs": 10, "momentum": 0.9,
               "weight_decay": 0.0}
DEFAULT_EPOCHS = {"sweep": 100, "magma": 100, "mae": 100, "lars": LARS_RECIPE["epochs"]}
# L2 strengths of `sweep` (mean cross-entropy + wd/2 |W|^2), a quarter decade apart from 1e-6 to 1:
# scikit-learn's C = 1/(n wd) from 1/n to 1e6/n for n training rows. A pick at either end warns. Half a
# decade apart, the pick landed up to 1.4 points under a finer-gridded LogisticRegressionCV on 600 rows.
SWEEP_WEIGHT_DECAYS = tuple(float(f"{10 ** (e / 4):.3g}") for e in range(-24, 1))
SWEEP_FOLDS = 5


class GridEdgeWarning(UserWarning):
    """The cross-validated weight decay is the grid's first or last: the best may lie outside it."""


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
        order = torch.randperm(n, generator=generator).to(x.device)  # x on the host when streamed
        loss_sum = torch.zeros(heads.num_heads, device=heads.weight.device)
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


def lars_batch_size(rows: int) -> int:
    """MAE's batch of 16384, or for a smaller train split the largest power of two that leaves at
    least 16 steps per epoch (2 at the least, for BatchNorm): 1281167 rows -> 16384, 10000 -> 512."""
    return max(2, min(LARS_RECIPE["batch_size"], 2 ** max(1, (rows // 16).bit_length() - 1)))


def warmup_cosine(epoch: float, epochs: int, warmup_epochs: float) -> float:
    """MAE's lr factor at a fractional epoch: linear warm-up from 0, then a half cosine to 0."""
    if epoch < warmup_epochs:
        return epoch / warmup_epochs
    return 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup_epochs) / max(epochs - warmup_epochs, 1e-12)))


def _use_lars(heads: LinearHeads, steps_per_epoch: int, epochs: int):
    """Switch `heads` to LARS; MAE's per-iteration lr factor (warm-up, then cosine) and the warm-up
    epochs: 10 of 90, the same share of a shorter run."""
    heads.use_lars()
    warmup = min(LARS_RECIPE["warmup_epochs"], epochs / 9)
    return (lambda epoch, step: warmup_cosine(step / steps_per_epoch, epochs, warmup)), warmup


def _feature_stats(fit_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of `fit_x`; a constant dimension keeps scale 1 (sklearn's StandardScaler rule),
    so it stays 0 on the fit rows instead of dividing by zero."""
    std = fit_x.std(dim=0, unbiased=False)
    return fit_x.mean(dim=0), torch.where(std > 0, std, torch.ones_like(std))


def _standardise(fit_x: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """Centre and scale by the mean and std of `fit_x`."""
    mean, std = _feature_stats(fit_x)
    return [(x - mean) / std for x in (fit_x, *others)]


def _summary(on_test: dict, on_train: dict, num_classes: int) -> dict:
    result = {"top1": float(on_test["top1"]), "train_top1": float(on_train["top1"]),
              "train_loss": float(on_train["loss"])}
    if num_classes >= 5:
        result["top5"] = float(on_test["topk"])
    return result


def _head_scores(heads: LinearHeads, train, test, num_classes: int) -> dict:
    """The first head's summary (a head gone non-finite scores -1)."""
    first = lambda scored: {key: value[0] for key, value in scored.items()}  # noqa: E731
    return _summary(first(heads.evaluate(*test, k=min(5, num_classes))), first(heads.evaluate(*train)), num_classes)


def _pick(grid: list[dict], rows: int) -> int:
    """The lowest out-of-fold loss among the grid points whose out-of-fold top-1 is within a quarter
    of its standard error of the best. On 600 rows the top-1 of neighbouring weight decays differs
    by a few rows, noise that moved test top-1 by 1.1 points; the loss breaks such near-ties."""
    best = max(g["heldout_top1"] for g in grid)
    tolerance = 25.0 * math.sqrt(best / 100 * (1 - best / 100) / rows)  # SE / 4, in percent
    near = [i for i, g in enumerate(grid) if g["heldout_top1"] >= best - tolerance - 1e-9]
    return min(near, key=lambda i: grid[i]["heldout_loss"])


def sweep_probe(train_x, train_y, test_x, test_y, *, epochs: int = 100, weight_decays=SWEEP_WEIGHT_DECAYS,
                folds: int = SWEEP_FOLDS, seed: int = 0, device: str = "cpu", progress: bool = False,
                keep_head: bool = False) -> dict:
    """The default probe (module docstring); `epochs` caps the L-BFGS iterations of each fit.

    Returns top1, top5 (5+ classes), train_top1 and train_loss (cross-entropy of the final head on
    the whole train split), the chosen weight_decay with its cross-validated heldout_top1 and
    heldout_loss, the grid (every weight decay's), at_grid_edge, folds, heldout_images (every
    train row, once), iterations and converged (of the final fit), capped_fits (fold fits that
    hit the cap), lr (None: L-BFGS has none), epochs, protocol, num_classes. `keep_head`: also
    "head", the final head on the raw features (the standardisation folded in): weight (C, D), bias (C,).
    """
    train_x, train_y, test_x, test_y, num_classes = check_split(train_x, train_y, test_x, test_y)
    if not weight_decays or min(weight_decays) <= 0 or len(set(weight_decays)) != len(weight_decays):
        raise MimregError(f"weight_decays must be distinct positive numbers, got {weight_decays}")
    folds = min(folds, int(train_y.bincount().max()))
    if folds < 2:
        raise MimregError("no class has two training rows to cross-validate on; pass more training features")
    dev = torch.device(device)
    dtype = solver_dtype(dev)
    x, test_xs = (t.to(dev, dtype) for t in _standardise(train_x.double(), test_x.double()))
    y = train_y.to(dev)
    grid, starts, capped = cross_validate(x, y, num_classes, sorted(weight_decays), folds=folds, seed=seed,
                                          max_iter=epochs, progress=progress)
    best = _pick(grid, len(train_y))
    decay = grid[best]["weight_decay"]
    at_edge = len(grid) > 1 and best in (0, len(grid) - 1)
    if at_edge:
        warnings.warn(f"linear probe: the chosen weight decay {decay:g} sits at the edge of the grid "
                      f"{[g['weight_decay'] for g in grid]}; the best may lie beyond it (pass wider weight_decays)",
                      GridEdgeWarning, stacklevel=2)

    # Refit on the whole train split: the folds were only needed to choose the weight decay.
    axes = principal_axes(x)
    final = fit_rotated(x @ axes[1], y, num_classes, decay, max_iter=epochs, axes=axes, start=starts[decay])
    if not final.converged:
        warnings.warn(f"linear probe: L-BFGS stopped at {epochs} iterations before converging; raise epochs",
                      RuntimeWarning, stacklevel=2)
    result = _summary(scores(final.weight, final.bias, test_xs, test_y.to(dev), k=min(5, num_classes)),
                      scores(final.weight, final.bias, x, y), num_classes)
    if keep_head:
        head = _raw_feature_head(final.weight, final.bias, *_feature_stats(train_x.double()))
        result["head"] = {key: value.float() for key, value in head.items()}
    return {**result, "heldout_top1": grid[best]["heldout_top1"], "heldout_loss": grid[best]["heldout_loss"],
            "lr": None, "weight_decay": decay, "grid": grid, "at_grid_edge": at_edge, "folds": folds,
            "heldout_images": int(train_y.numel()), "iterations": final.iterations, "converged": final.converged,
            "capped_fits": capped, "epochs": epochs, "protocol": "sweep", "num_classes": num_classes}


def _raw_feature_head(weight, bias, mean, std) -> dict:
    """W (x - mu) / sigma + b as W' x + b' on raw features x."""
    folded = weight / std.to(weight)
    return {"weight": folded.cpu(), "bias": (bias - folded @ mean.to(weight)).cpu()}


def linear_probe(train_x, train_y, test_x, test_y, *, protocol: str = "sweep", epochs: int | None = None,
                 lr: float = 0.1, momentum: float = 0.9, milestones=(60, 80), gamma: float = 0.1,
                 batch_size: int | None = None, weight_decay: float = 0.0, seed: int = 0, device: str = "cpu",
                 stream: bool = False, progress: bool = False, keep_head: bool = False, **sweep_options) -> dict:
    """Train a linear classifier on frozen (N, D) features; report accuracies in percent.

    `protocol="sweep"` (default): see `sweep_probe` (`epochs` caps its L-BFGS iterations; lr,
    momentum, milestones, gamma, batch_size and weight_decay do not apply; `sweep_options` go to it). `protocol="magma"`: a plain linear layer on the raw features.
    `protocol="mae"`: BatchNorm1d(D, affine=False, eps=1e-6) before the linear layer, as in MAE's
    linear probe; it runs in eval mode (running statistics) when scoring. Both fixed recipes
    multiply the lr by `gamma` at each epoch index in `milestones` (0-based, like MultiStepLR
    stepped per epoch). Mini-batches are reshuffled every epoch from a generator seeded with
    `seed`; the last, smaller batch is kept, except a single leftover sample under "mae".
    `protocol="lars"`: LARS_RECIPE (module docstring); `lr` is the base lr (default 0.1), scaled by
    batch / 256; `batch_size` defaults to `lars_batch_size` of the train rows; milestones, gamma
    and weight_decay do not apply. `epochs` defaults to DEFAULT_EPOCHS of the protocol; batch_size to 256.

    `stream`: the train features stay where they are (a memory-mapped feature store) and go to
    `device` a mini-batch at a time. Fixed recipes return top1, top5 (only with 5 or more
    classes), train_top1, train_loss (mean over the last epoch), epochs, protocol and num_classes
    (max train label + 1); lars also lr (the scaled one), base_lr, batch_size and warmup_epochs.
    `keep_head`: also "head", the trained head as one linear layer on the raw features (any
    standardisation or BatchNorm folded in): weight (C, D), bias (C,).
    """
    if protocol not in PROTOCOLS:
        raise MimregError(f"unknown linear-probe protocol {protocol!r}; use one of {PROTOCOLS}")
    epochs = DEFAULT_EPOCHS[protocol] if epochs is None else epochs
    if protocol == "lars":
        batch_size = batch_size or lars_batch_size(len(train_y))
    batch_size = 256 if batch_size is None else batch_size
    if epochs < 1 or batch_size < 1:
        raise MimregError(f"epochs ({epochs}) and batch_size ({batch_size}) must be at least 1")
    if protocol == "sweep":
        if stream:
            raise MimregError("the 'sweep' probe fits on every train feature in memory; with stored features use "
                              "--linear-protocol lars, mae or magma (they read mini-batches from the store)")
        return sweep_probe(train_x, train_y, test_x, test_y, epochs=epochs, seed=seed, device=device,
                           progress=progress, keep_head=keep_head, **sweep_options)
    if sweep_options:
        raise MimregError(f"{sorted(sweep_options)} only apply to protocol 'sweep', not {protocol!r}")
    if not (lr > 0 and math.isfinite(lr)):
        raise MimregError(f"lr must be a positive number, got {lr}")
    train_x, train_y, test_x, test_y, num_classes = check_split(train_x, train_y, test_x, test_y)
    batch_norm = protocol in ("mae", "lars")
    if batch_norm and train_x.shape[0] < 2:
        raise MimregError(f"the {protocol!r} protocol needs at least 2 training rows for BatchNorm; use protocol='magma'")

    dev = torch.device(device)
    generator = torch.Generator().manual_seed(seed)
    base_lr = lr
    if protocol == "lars":
        batch_size = min(batch_size, train_x.shape[0])  # the last incomplete batch is dropped: keep one
        lr = base_lr * batch_size / 256  # MAE's linear scaling rule
    heads = LinearHeads(train_x.shape[1], num_classes, [lr], [weight_decay if protocol != "lars" else 0.0],
                        momentum=LARS_RECIPE["momentum"] if protocol == "lars" else momentum,
                        batch_norm=batch_norm, generator=generator, device=dev)
    x, y = (train_x, train_y) if stream else (train_x.to(dev), train_y.to(dev))
    if protocol == "lars":
        lr_scale, warmup = _use_lars(heads, x.shape[0] // batch_size, epochs)
        min_batch = batch_size  # MAE's loader drops the last incomplete batch
    else:
        lr_scale = lambda epoch, step: _lr_at(epoch, 1.0, milestones, gamma)  # noqa: E731
        min_batch = 2 if batch_norm else 1
    last_loss = _train(heads, x, y, epochs=epochs, batch_size=batch_size, generator=generator, min_batch=min_batch,
                       progress=f"linear_probe[{protocol}]" if progress else None, lr_scale=lr_scale)
    result = _head_scores(heads, (x, y), (test_x, test_y), num_classes)
    result["train_loss"] = float(last_loss[0])
    if protocol == "lars":
        result.update(lr=lr, base_lr=base_lr, batch_size=batch_size, warmup_epochs=warmup)
    if keep_head:
        result["head"] = heads.raw_feature_head(0)
    return {**result, "epochs": epochs, "protocol": protocol, "num_classes": num_classes}
