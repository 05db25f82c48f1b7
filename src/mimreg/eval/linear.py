"""Linear probe on frozen features (MAGMA and MAE protocols)."""

from __future__ import annotations

import math
import sys

import torch
import torch.nn.functional as F
from torch import nn

from mimreg.errors import MimregError
from mimreg.eval._inputs import check_split

PROTOCOLS = ("magma", "mae")
_EVAL_CHUNK = 8192
_BN_EPS = 1e-6
_BN_MOMENTUM = 0.1  # nn.BatchNorm1d's default


class _LinearHead:
    """Linear classifier, optionally behind a parameter-free BatchNorm1d (MAE's probe head).

    Gradients are written out by hand: the features are frozen and the BN has no affine
    parameters, so only the softmax-regression gradient is needed. This skips autograd and
    torch.optim, whose first use imports torch._dynamo (seconds on CPU) and whose per-step
    overhead dominates such small problems.
    """

    def __init__(self, dim: int, num_classes: int, batch_norm: bool, generator: torch.Generator, device):
        weight = torch.empty(num_classes, dim)
        # MAE's head init (trunc-normal, std 0.01), drawn from our generator so the global
        # RNG is neither read nor advanced.
        nn.init.trunc_normal_(weight, std=0.01, generator=generator)
        self.weight = weight.to(device)
        self.bias = torch.zeros(num_classes, device=device)
        self.batch_norm = batch_norm
        if batch_norm:
            self.running_mean = torch.zeros(dim, device=device)
            self.running_var = torch.ones(dim, device=device)

    def inputs(self, x: torch.Tensor, training: bool) -> torch.Tensor:
        if not self.batch_norm:
            return x
        # Same semantics as nn.BatchNorm1d: batch statistics (and a running-stat update)
        # in training, running statistics otherwise.
        return F.batch_norm(
            x, self.running_mean, self.running_var, training=training, momentum=_BN_MOMENTUM, eps=_BN_EPS
        )

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Evaluation-mode logits."""
        return torch.addmm(self.bias, self.inputs(x, training=False), self.weight.T)


class _MomentumSGD:
    """torch.optim.SGD's update (momentum, no dampening, L2 weight decay added to the gradient)."""

    def __init__(self, params: list[torch.Tensor], momentum: float, weight_decay: float):
        self.params = params
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.buffers: list[torch.Tensor | None] = [None] * len(params)

    def step(self, grads: list[torch.Tensor], lr: float) -> None:
        for i, (param, grad) in enumerate(zip(self.params, grads)):
            if self.weight_decay:
                grad = grad.add(param, alpha=self.weight_decay)
            if self.momentum:
                if self.buffers[i] is None:
                    self.buffers[i] = grad.clone()
                else:
                    self.buffers[i].mul_(self.momentum).add_(grad)
                grad = self.buffers[i]
            param.sub_(grad, alpha=lr)


def _lr_at(epoch: int, lr: float, milestones, gamma: float) -> float:
    return lr * gamma ** sum(epoch >= m for m in milestones)


@torch.no_grad()
def _accuracy(head: _LinearHead, x: torch.Tensor, y: torch.Tensor, k: int) -> tuple[float, float]:
    """Top-1 and top-k percentages, in chunks to bound the logits' memory."""
    hits1 = hitsk = 0
    for start in range(0, x.shape[0], _EVAL_CHUNK):
        logits = head.logits(x[start : start + _EVAL_CHUNK])
        labels = y[start : start + _EVAL_CHUNK, None]
        top = logits.topk(k, dim=1).indices
        hits1 += int((top[:, :1] == labels).sum())
        hitsk += int((top == labels).any(dim=1).sum())
    return 100.0 * hits1 / x.shape[0], 100.0 * hitsk / x.shape[0]


def linear_probe(
    train_x,
    train_y,
    test_x,
    test_y,
    *,
    protocol: str = "magma",
    epochs: int = 100,
    lr: float = 0.1,
    momentum: float = 0.9,
    milestones=(60, 80),
    gamma: float = 0.1,
    batch_size: int = 256,
    weight_decay: float = 0.0,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = False,
) -> dict:
    """Train a linear classifier on frozen (N, D) features with SGD; report accuracies in percent.

    `protocol="magma"`: a plain linear layer. `protocol="mae"`: BatchNorm1d(D, affine=False,
    eps=1e-6) before the linear layer, as in MAE's linear probe; it runs in eval mode (running
    statistics) when scoring. The lr is multiplied by `gamma` at each epoch index in
    `milestones` (0-based, like MultiStepLR stepped per epoch). Mini-batches are reshuffled
    every epoch from a generator seeded with `seed`; the last, smaller batch is kept, except a
    single leftover sample under "mae" (batch statistics of one sample are undefined).

    Returns top1, top5 (only with 5 or more classes), train_top1, train_loss (mean over the
    last epoch), epochs, protocol and num_classes (max train label + 1).
    """
    if protocol not in PROTOCOLS:
        raise MimregError(f"unknown linear-probe protocol {protocol!r}; use one of {PROTOCOLS}")
    if epochs < 1 or batch_size < 1:
        raise MimregError(f"epochs ({epochs}) and batch_size ({batch_size}) must be at least 1")
    if not (lr > 0 and math.isfinite(lr)):
        raise MimregError(f"lr must be a positive number, got {lr}")
    train_x, train_y, test_x, test_y, num_classes = check_split(train_x, train_y, test_x, test_y)
    if protocol == "mae" and train_x.shape[0] < 2:
        raise MimregError("the 'mae' protocol needs at least 2 training rows for BatchNorm; use protocol='magma'")

    dev = torch.device(device)
    # A CPU generator keeps init and shuffling identical whatever the device.
    generator = torch.Generator().manual_seed(seed)
    head = _LinearHead(train_x.shape[1], num_classes, protocol == "mae", generator, dev)
    optimizer = _MomentumSGD([head.weight, head.bias], momentum, weight_decay)
    x, y = train_x.to(dev), train_y.to(dev)
    n = x.shape[0]
    min_batch = 2 if protocol == "mae" else 1

    with torch.no_grad():
        for epoch in range(epochs):
            epoch_lr = _lr_at(epoch, lr, milestones, gamma)
            order = torch.randperm(n, generator=generator).to(dev)
            loss_sum = torch.zeros((), device=dev)
            seen = 0
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size]
                if idx.numel() < min_batch:
                    continue
                inputs = head.inputs(x[idx], training=True)
                log_probs = torch.addmm(head.bias, inputs, head.weight.T).log_softmax(dim=1)
                targets = y[idx, None]
                # d(mean cross-entropy)/d(logits) = (softmax - one_hot) / batch
                grad_logits = log_probs.exp()
                grad_logits.scatter_add_(1, targets, torch.full_like(targets, -1, dtype=grad_logits.dtype))
                grad_logits /= idx.numel()
                optimizer.step([grad_logits.T @ inputs, grad_logits.sum(dim=0)], epoch_lr)
                # Summed on-device to avoid a host sync per step.
                loss_sum -= log_probs.gather(1, targets).sum()
                seen += idx.numel()
            if progress and (epoch % 10 == 9 or epoch == epochs - 1):
                print(
                    f"linear_probe[{protocol}] epoch {epoch + 1}/{epochs} "
                    f"lr {epoch_lr:.4g} loss {float(loss_sum) / seen:.4f}",
                    file=sys.stderr,
                    flush=True,
                )

    k = min(5, num_classes)
    top1, top5 = _accuracy(head, test_x.to(dev), test_y.to(dev), k)
    train_top1, _ = _accuracy(head, x, y, 1)
    result = {
        "top1": top1,
        "train_top1": train_top1,
        "train_loss": float(loss_sum) / seen,
        "epochs": epochs,
        "protocol": protocol,
        "num_classes": num_classes,
    }
    if num_classes >= 5:
        result["top5"] = top5
    return result
