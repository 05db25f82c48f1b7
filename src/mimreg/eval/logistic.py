"""Full-batch L2-regularised multinomial logistic regression, its L2 strength chosen by k-fold CV.

The objective is mean cross-entropy + weight_decay / 2 * |W|^2 (the bias is not penalised): the
minimum SGD with that weight decay heads for, and scikit-learn's LogisticRegression with
C = 1 / (n * weight_decay). It is convex, so L-BFGS (scipy's L-BFGS-B, as scikit-learn uses)
reaches it without a learning rate; the loss and gradient are computed by torch on the features'
device, in float64 (float32 on MPS, which has no float64).
Written here rather than taken from scikit-learn's LogisticRegression: the cross-validation fits
25 strengths x 5 folds, each started from the last (a warm start along the path, in one shared
rotated and rescaled coordinate system), on the GPU where the features are; sklearn's solver
cannot share that work across folds or run on the GPU, and it is the reference the tests compare to.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
import torch

_CHUNK = 8192  # rows per block of logits: bounds their memory with many classes
GRAD_TOL = 1e-5  # largest |gradient| component at which a fit counts as converged


@dataclass
class LogisticFit:
    weight: torch.Tensor  # (C, D)
    bias: torch.Tensor  # (C,)
    iterations: int
    converged: bool


def solver_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def _log_softmax(logits: torch.Tensor) -> torch.Tensor:
    # spelt out: torch's float64 log_softmax kernel on CPU is 2.5x slower, and it runs thousands of times
    shifted = logits - logits.amax(dim=1, keepdim=True)
    return shifted - shifted.exp().sum(dim=1, keepdim=True).log()


def loss_and_grad(weight, bias, x, y, weight_decay):
    """The objective and its gradients with respect to weight and bias; `weight_decay` is a number
    or one per feature (D,)."""
    loss = x.new_zeros(())
    grad_weight, grad_bias = torch.zeros_like(weight), torch.zeros_like(bias)
    for start in range(0, x.shape[0], _CHUNK):
        xs, ys = x[start : start + _CHUNK], y[start : start + _CHUNK, None]
        log_probs = _log_softmax(torch.addmm(bias, xs, weight.T))
        loss -= log_probs.gather(1, ys).sum()
        # d(cross-entropy)/d(logits) = softmax - one_hot
        grad_logits = log_probs.exp_().scatter_add_(1, ys, torch.full_like(ys, -1, dtype=x.dtype))
        grad_weight += grad_logits.T @ xs
        grad_bias += grad_logits.sum(dim=0)
    n = x.shape[0]
    return (loss / n + 0.5 * (weight_decay * weight.square()).sum(), grad_weight / n + weight_decay * weight,
            grad_bias / n)


def principal_axes(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (D,) and eigenvectors (D, D) of x's second-moment matrix, computed in float64 on
    the CPU (MPS has no eigh); x @ vectors has uncorrelated columns of those second moments."""
    values, vectors = torch.linalg.eigh((x.T @ x).double().cpu() / x.shape[0])
    return values.clamp_min(0).to(x), vectors.to(x)


def fit_logistic(x: torch.Tensor, y: torch.Tensor, num_classes: int, weight_decay: float, *, max_iter: int,
                 start: tuple[torch.Tensor, torch.Tensor] | None = None,
                 variances: torch.Tensor | None = None) -> LogisticFit:
    """Minimise the objective from `start` (weight, bias) or zero, at most `max_iter` L-BFGS
    iterations (each one full pass over x, a line search adding a few at times).

    `variances`: the second moments of x's columns when they are uncorrelated (x rotated onto its
    principal_axes). L-BFGS then runs on V = W / d, d = (variance + weight_decay)^-1/2: the same
    objective, whose curvature is then near 1 in every direction instead of spanning the features'
    eigenvalues (correlated features took 900 iterations where this takes tens).
    """
    from scipy.optimize import minimize

    dim = x.shape[1]
    d = torch.ones(dim).to(x) if variances is None else (variances + weight_decay).rsqrt()
    scaled, decay = x * d, weight_decay * d.square()
    theta = np.zeros((num_classes, dim + 1))
    if start is not None:
        theta[:, :dim], theta[:, dim] = (start[0] / d).double().cpu().numpy(), start[1].double().cpu().numpy()

    def objective(flat: np.ndarray):
        params = torch.from_numpy(flat).view(num_classes, dim + 1).to(x)
        loss, grad_weight, grad_bias = loss_and_grad(params[:, :dim], params[:, dim], scaled, y, decay)
        grad = torch.cat([grad_weight, grad_bias[:, None]], dim=1)
        return float(loss), grad.double().cpu().numpy().ravel()

    # ftol: scikit-learn's 64 machine epsilons, so only the gradient test stops a fit early
    found = minimize(objective, theta.ravel(), jac=True, method="L-BFGS-B",
                     options={"maxiter": max_iter, "gtol": GRAD_TOL, "ftol": 64 * np.finfo(float).eps})
    params = torch.from_numpy(found.x).view(num_classes, dim + 1).to(x)
    converged = bool(np.abs(found.jac).max() <= GRAD_TOL) or found.status == 0
    return LogisticFit(params[:, :dim] * d, params[:, dim].clone(), int(found.nit), converged)


def fit_rotated(x: torch.Tensor, y: torch.Tensor, num_classes: int, weight_decay: float, *, max_iter: int,
                axes: tuple[torch.Tensor, torch.Tensor], start: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> LogisticFit:
    """fit_logistic on x already rotated onto `axes` (principal_axes of x: values, vectors), `start`
    and the result in x's original coordinates: the L2 penalty does not change under a rotation."""
    values, vectors = axes
    start = None if start is None else (start[0] @ vectors, start[1])
    fit = fit_logistic(x, y, num_classes, weight_decay, max_iter=max_iter, start=start, variances=values)
    fit.weight = fit.weight @ vectors.T
    return fit


@torch.no_grad()
def scores(weight, bias, x, y, k: int = 1) -> dict[str, float]:
    """Top-1 and top-k percentages and the mean cross-entropy of a head on (x, y)."""
    hits1 = hitsk = 0
    loss = 0.0
    for start in range(0, x.shape[0], _CHUNK):
        logits = torch.addmm(bias, x[start : start + _CHUNK], weight.T)
        labels = y[start : start + _CHUNK, None]
        top = logits.topk(k, dim=1).indices
        hits1 += int((top[:, :1] == labels).sum())
        hitsk += int((top == labels).any(dim=1).sum())
        loss -= float(_log_softmax(logits).gather(1, labels).sum())
    n = x.shape[0]
    return {"top1": 100.0 * hits1 / n, "topk": 100.0 * hitsk / n, "loss": loss / n}


def cross_validate(x: torch.Tensor, y: torch.Tensor, num_classes: int, weight_decays, *, folds: int, seed: int,
                   max_iter: int, progress: bool = False) -> tuple[list[dict], dict[float, tuple], int]:
    """Out-of-fold top-1 and loss of every weight decay over seeded stratified folds of (x, y).

    Returns one {"weight_decay", "heldout_top1", "heldout_loss"} per weight decay (grid order),
    each weight decay's mean fold solution (a warm start for the refit) and how many fold fits
    stopped at `max_iter`. Each fold walks the grid from strong to weak decay, each fit starting
    from the previous one's solution, as scikit-learn's regularisation path does.
    """
    from sklearn.model_selection import StratifiedKFold

    labels = y.cpu().numpy()
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    hits = dict.fromkeys(weight_decays, 0)
    losses = dict.fromkeys(weight_decays, 0.0)
    sums: dict[float, list[torch.Tensor]] = {}
    capped = 0
    for fold, (fit_rows, held_rows) in enumerate(splitter.split(np.zeros(len(labels)), labels)):
        fit_rows, held_rows = (torch.from_numpy(r).to(x.device) for r in (fit_rows, held_rows))
        axes = principal_axes(x[fit_rows])
        fit_x = x[fit_rows] @ axes[1]  # rotated once per fold, not once per fit
        start = None
        for decay in sorted(weight_decays, reverse=True):
            # decay * n / n_fit: the penalty the whole split's sum of losses gets (scikit-learn's C),
            # so that each fold is regularised as the refit on all n rows will be
            result = fit_rotated(fit_x, y[fit_rows], num_classes, decay * len(labels) / len(fit_rows),
                                 max_iter=max_iter, axes=axes, start=start)
            start = (result.weight, result.bias)
            capped += not result.converged
            held = scores(result.weight, result.bias, x[held_rows], y[held_rows])
            hits[decay] += round(held["top1"] * len(held_rows) / 100.0)  # a count: ties stay exact
            losses[decay] += held["loss"] * len(held_rows)
            previous = sums.get(decay, [0.0, 0.0])
            sums[decay] = [previous[0] + result.weight, previous[1] + result.bias]
        if progress:
            print(f"linear sweep: fold {fold + 1}/{folds} done", file=sys.stderr, flush=True)
    n = len(labels)
    grid = [{"weight_decay": d, "heldout_top1": 100.0 * hits[d] / n, "heldout_loss": losses[d] / n}
            for d in weight_decays]
    starts = {d: (s[0] / folds, s[1] / folds) for d, s in sums.items()}
    return grid, starts, capped
