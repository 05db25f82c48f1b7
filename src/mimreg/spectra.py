"""Singular-value spectrum and effective rank of a feature matrix: numbers that evaluations and
analysis both read (analysis/spectrum.py draws them)."""

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
    total = values.sum()
    if total <= 0:
        return 0.0
    p = values / total
    p = p[p > 0]  # 0 * log 0 = 0 by continuity
    return float(math.exp(float(-(p * p.log()).sum())))
