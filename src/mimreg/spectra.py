"""Singular-value spectrum of a feature matrix and the numbers read from it: effective rank,
RankMe and alpha-ReQ. Evaluations, analysis (analysis/spectrum.py draws them) and the engine's
representation monitor all read them."""

from __future__ import annotations

import math

import torch

from mimreg.errors import MimregError


def _as_matrix(features) -> torch.Tensor:
    x = torch.as_tensor(features)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise MimregError(f"features must be a non-empty (N, D) matrix, got shape {tuple(x.shape)}")
    x = x.detach().to(torch.float64)
    if not torch.isfinite(x).all():
        raise MimregError("features contain NaN or inf; check the encoder output")
    return x


def singular_values(features, center: bool = True) -> torch.Tensor:
    """Singular values (float64, descending, length min(N, D)) of the (N, D) feature matrix.

    With center=True the column means are removed first. Values at the level of float64
    round-off of the input (below max(N, D) * eps * ||X||_F) are set to exactly 0, so a
    collapsed representation (all rows equal) has an all-zero spectrum rather than noise.
    """
    x = _as_matrix(features)
    scale = torch.linalg.matrix_norm(x)
    if center:
        x = x - x.mean(dim=0, keepdim=True)
    values = torch.linalg.svdvals(x)
    noise_floor = max(x.shape) * torch.finfo(torch.float64).eps * scale
    return torch.where(values > noise_floor, values, torch.zeros_like(values))


def effective_rank(features_or_singular_values, center: bool = True) -> float:
    """Effective rank (Roy & Vetterli, 2007): exp of the Shannon entropy of s_i / sum(s).

    A 2-D input is a feature matrix (centred when center=True); a 1-D input is taken as its
    singular values (center is then ignored). Ranges over [1, min(N, D)] for a non-zero
    matrix; a zero matrix, e.g. N=1 or identical rows after centring, returns 0.0 so that
    total collapse stands apart from a rank-1 representation.
    """
    values = torch.as_tensor(features_or_singular_values)
    if values.ndim == 2:
        values = singular_values(values, center=center)
    elif values.ndim == 1:
        values = values.detach().to(torch.float64)
        if values.numel() == 0 or not torch.isfinite(values).all() or (values < 0).any():
            raise MimregError("singular values must be a non-empty vector of finite, non-negative numbers")
    else:
        raise MimregError(
            f"effective_rank takes an (N, D) feature matrix or a 1-D vector of singular values, "
            f"got shape {tuple(values.shape)}"
        )
    return _exp_entropy(values, eps=0.0)


# RankMe's epsilon (Garrido et al. 2023, Eq. 1; their value for float32 embeddings)
RANKME_EPS = 1e-7
# alpha-ReQ's fitted ranks, 1-based and inclusive: the authors' code (reptrix `get_alpha`,
# fit_range = arange(5, 100) 0-based) skips the first five eigenvalues and stops at the 100th
ALPHA_REQ_RANKS = (6, 100)


def _exp_entropy(values: torch.Tensor, eps: float) -> float:
    """exp(-sum p log p) with p = values / sum(values) + eps; 0.0 for an all-zero spectrum."""
    total = values.sum()
    if total <= 0:
        return 0.0
    p = values / total + eps
    p = p[p > 0]  # 0 * log 0 = 0 by continuity (only reached with eps = 0)
    return float(math.exp(float(-(p * p.log()).sum())))


def rankme(features, eps: float = RANKME_EPS) -> float:
    """RankMe (Garrido et al., ICML 2023, Eq. 1): exp(-sum_k p_k log p_k), p_k = s_k / ||s||_1 + eps.

    features: (N, D) embeddings, NOT centred (as in the paper); s: their min(N, D) singular values.
    It is `effective_rank(features, center=False)` but for eps, added to every p_k (zeros included:
    each zero singular value adds -eps log eps ~ 1.6e-6 to the entropy). Ranges over about
    [1, min(N, D)]; 0.0 for an all-zero matrix.
    """
    return _exp_entropy(singular_values(features, center=False), eps=eps)


def alpha_req(features, ranks: tuple[int, int] = ALPHA_REQ_RANKS) -> float:
    """alpha-ReQ (Agrawal et al., NeurIPS 2022): the decay coefficient alpha of lambda_k ~ k^-alpha.

    features: (N, D). lambda_k: eigenvalues of their covariance (centred, = s_k^2 / (N - 1) with s
    the singular values of the centred features), so s_k ~ k^-a gives alpha = 2a. alpha is minus the
    slope of log lambda_k against log k, fitted by least squares weighted by 1/k (as the authors'
    code) over ranks `ranks` (1-based, inclusive), cut to the positive eigenvalues. NaN when fewer
    than two ranks remain (a representation collapsed to fewer than ranks[0] + 1 dimensions).
    """
    first, last = ranks
    if not 1 <= first < last:
        raise MimregError(f"alpha_req ranks must be 1 <= first < last, got {ranks}")
    values = singular_values(features, center=True)
    positive = int((values > 0).sum())
    last = min(last, positive)
    if last - first < 1:
        return float("nan")
    k = torch.arange(first, last + 1, dtype=torch.float64, device=values.device)
    log_eig = 2 * values[first - 1 : last].log()  # the 1 / (N - 1) of the covariance only shifts the intercept
    design = torch.stack([-k.log(), torch.ones_like(k)], dim=1)
    weight = (1 / k)[:, None]
    coef = torch.linalg.solve(design.T @ (weight * design), (weight * design).T @ log_eig[:, None])
    return float(coef[0, 0])
