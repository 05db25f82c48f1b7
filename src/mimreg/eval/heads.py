"""Several linear softmax classifiers trained together on the same frozen features.

One pass over the features trains one head per (learning rate, weight decay) setting, as
DINOv2's linear evaluation trains one classifier per learning rate: each mini-batch is read once
and multiplied by all heads in one matmul.

Gradients are written out by hand: the features are frozen and the optional BatchNorm has no
affine parameters, so only the softmax-regression gradient is needed. This skips autograd and
torch.optim, whose first use imports torch._dynamo (seconds on CPU) and whose per-step overhead
dominates such small problems.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_EVAL_CHUNK = 8192
_BN_EPS = 1e-6
_BN_MOMENTUM = 0.1  # nn.BatchNorm1d's default


class LinearHeads:
    """H heads: weight (H, C, D), bias (H, C), each with its own lr and L2 weight decay, updated by
    torch.optim.SGD's rule (momentum, no dampening, decay added to the gradient of every parameter).

    `batch_norm`: a parameter-free BatchNorm1d(D, eps=1e-6) in front of every head (MAE's probe):
    batch statistics and a running-statistics update in training, running statistics otherwise.
    """

    def __init__(self, dim: int, num_classes: int, lrs, weight_decays, *, momentum: float, batch_norm: bool,
                 generator: torch.Generator, device):
        weight = torch.empty(num_classes, dim)
        # MAE's head init (trunc-normal, std 0.01), drawn from our generator so the global RNG is
        # neither read nor advanced; every head starts from the same draw.
        nn.init.trunc_normal_(weight, std=0.01, generator=generator)
        self.num_heads = len(lrs)
        self.weight = weight.to(device).repeat(self.num_heads, 1, 1)
        self.bias = torch.zeros(self.num_heads, num_classes, device=device)
        self.lrs = torch.tensor(lrs, dtype=torch.float32, device=device)
        self.weight_decays = torch.tensor(weight_decays, dtype=torch.float32, device=device)
        self.momentum = momentum
        self.buffers: list[torch.Tensor] | None = None
        self.batch_norm = batch_norm
        self.lars = None
        if batch_norm:
            self.running_mean = torch.zeros(dim, device=device)
            self.running_var = torch.ones(dim, device=device)

    def inputs(self, x: torch.Tensor, training: bool) -> torch.Tensor:
        if not self.batch_norm:
            return x
        return F.batch_norm(x, self.running_mean, self.running_var, training=training, momentum=_BN_MOMENTUM,
                            eps=_BN_EPS)

    def _logits(self, inputs: torch.Tensor) -> torch.Tensor:
        """(B, D) -> (H, B, C)."""
        heads, classes, dim = self.weight.shape
        flat = torch.addmm(self.bias.reshape(-1), inputs, self.weight.reshape(heads * classes, dim).T)
        return flat.view(-1, heads, classes).transpose(0, 1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Evaluation-mode logits (H, B, C)."""
        return self._logits(self.inputs(x, training=False))

    def use_lars(self, trust_coeff: float = 0.001) -> None:
        """Step with timm's LARS (MAE's linear probe) instead of SGD: the weight's update is scaled by
        trust_coeff |W| / |grad| (always, as MAE's LARS does even without weight decay); the bias,
        like MAE's 1-D parameters, takes plain momentum SGD. One head only: the trust ratio is per tensor."""
        from timm.optim import Lars

        if self.num_heads != 1:
            raise ValueError("LARS trains one head at a time")
        lr, decay = float(self.lrs[0]), float(self.weight_decays[0])
        self.lars = Lars([{"params": [self.weight], "always_adapt": True, "weight_decay": decay},
                          {"params": [self.bias], "weight_decay": 0.0}],
                         lr=lr, momentum=self.momentum, trust_coeff=trust_coeff)

    @torch.no_grad()
    def train_step(self, x: torch.Tensor, y: torch.Tensor, lr_scale: float) -> torch.Tensor:
        """One SGD (or LARS, see use_lars) step of every head on the batch (x (B, D), y (B,)); returns
        each head's summed cross-entropy over the batch (H,), before the step."""
        x, y = x.to(self.weight.device), y.to(self.weight.device)  # a batch read from a store on the host
        inputs = self.inputs(x, training=True)
        log_probs = self._logits(inputs).log_softmax(dim=2)
        targets = y.view(1, -1, 1).expand(self.num_heads, -1, 1)
        # d(mean cross-entropy)/d(logits) = (softmax - one_hot) / batch
        grad_logits = log_probs.exp()
        grad_logits.scatter_add_(2, targets, torch.full_like(targets, -1, dtype=grad_logits.dtype))
        grad_logits /= x.shape[0]
        heads, classes, dim = self.weight.shape
        grad_weight = (grad_logits.transpose(0, 1).reshape(-1, heads * classes).T @ inputs).view(heads, classes, dim)
        if self.lars is None:
            self._sgd([self.weight, self.bias], [grad_weight, grad_logits.sum(dim=1)], lr_scale)
        else:
            self.weight.grad, self.bias.grad = grad_weight, grad_logits.sum(dim=1)
            for group in self.lars.param_groups:
                group["lr"] = lr_scale * float(self.lrs[0])
            self.lars.step()
        return -log_probs.gather(2, targets).sum(dim=(1, 2))

    def _sgd(self, params: list[torch.Tensor], grads: list[torch.Tensor], lr_scale: float) -> None:
        if self.buffers is None:
            self.buffers = [torch.zeros_like(p) for p in params]
            first = True
        else:
            first = False
        for param, grad, buffer in zip(params, grads, self.buffers):
            shape = (-1,) + (1,) * (param.ndim - 1)
            grad = grad + self.weight_decays.view(shape) * param
            if self.momentum:
                # torch.optim.SGD starts the buffer at the first gradient
                buffer.copy_(grad) if first else buffer.mul_(self.momentum).add_(grad)
                grad = buffer
            param.sub_(lr_scale * self.lrs.view(shape) * grad)

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor, k: int = 1) -> dict[str, torch.Tensor]:
        """Per head (H,): top-1 and top-k percentages and the mean cross-entropy, in chunks to bound
        the logits' memory. A head whose weights went non-finite scores -1 and loss inf."""
        hits1 = torch.zeros(self.num_heads, device=self.weight.device)
        hitsk = torch.zeros_like(hits1)
        loss = torch.zeros_like(hits1)
        device = self.weight.device
        for start in range(0, x.shape[0], _EVAL_CHUNK):  # x may be memory-mapped on the host
            logits = self.logits(x[start : start + _EVAL_CHUNK].to(device))
            labels = y[start : start + _EVAL_CHUNK].to(device).view(1, -1, 1).expand(self.num_heads, -1, 1)
            top = logits.topk(k, dim=2).indices
            hits1 += (top[..., :1] == labels).sum(dim=(1, 2))
            hitsk += (top == labels).any(dim=2).sum(dim=1)
            loss -= logits.log_softmax(dim=2).gather(2, labels).sum(dim=(1, 2))
        n = x.shape[0]
        finite = torch.isfinite(self.weight).flatten(1).all(1) & torch.isfinite(self.bias).all(1)
        fail = torch.full_like(hits1, -1.0)
        return {"top1": torch.where(finite, 100.0 * hits1 / n, fail), "topk": torch.where(finite, 100.0 * hitsk / n, fail),
                "loss": torch.where(finite, loss / n, torch.full_like(loss, float("inf")))}

    @torch.no_grad()
    def raw_feature_head(self, index: int = 0) -> dict[str, torch.Tensor]:
        """Head `index` as one linear layer on the raw features, its evaluation-mode BatchNorm
        (running statistics, no affine part) folded in: weight (C, D), bias (C,), float32 on the host."""
        weight, bias = self.weight[index].double(), self.bias[index].double()
        if self.batch_norm:
            scale = (self.running_var.double() + _BN_EPS).rsqrt()
            weight = weight * scale
            bias = bias - weight @ self.running_mean.double()
        return {"weight": weight.float().cpu(), "bias": bias.float().cpu()}
