"""Checks of feature matrices and labels handed to the feature-level classifiers (k-NN, linear, low-shot)."""

from __future__ import annotations

import torch

from mimreg.errors import MimregError

_CHECK_ROWS = 65536


def as_features(x, name: str) -> torch.Tensor:
    """Return `x` as a finite float32 (N, D) tensor, or raise MimregError."""
    x = torch.as_tensor(x)
    if x.ndim != 2:
        raise MimregError(
            f"{name} must be a 2-D (N, D) feature matrix, got shape {tuple(x.shape)}; "
            "flatten or pool the encoder output to one vector per image"
        )
    if x.shape[0] == 0:
        raise MimregError(f"{name} is empty; pass at least one feature row")
    if not (x.is_floating_point() or x.dtype in (torch.int32, torch.int64)):
        raise MimregError(f"{name} has dtype {x.dtype}; pass float features")
    x = x.to(torch.float32)
    # Checked a block of rows at a time: a memory-mapped (N, D) store is never read whole.
    if not all(torch.isfinite(x[start : start + _CHECK_ROWS]).all() for start in range(0, x.shape[0], _CHECK_ROWS)):
        raise MimregError(
            f"{name} contains NaN or inf; check the encoder output (diverged weights or fp16 overflow)"
        )
    return x


def as_labels(y, n_rows: int, name: str) -> torch.Tensor:
    """Return `y` as a non-negative int64 (N,) tensor matching `n_rows`, or raise MimregError."""
    y = torch.as_tensor(y)
    if y.ndim != 1:
        raise MimregError(f"{name} must be 1-D class indices, got shape {tuple(y.shape)}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise MimregError(f"{name} has dtype {y.dtype}; pass integer class indices (e.g. .long())")
    if y.shape[0] != n_rows:
        raise MimregError(
            f"{name} has {y.shape[0]} labels but the features have {n_rows} rows; "
            "pass one label per feature row"
        )
    y = y.to(torch.int64)
    if (y < 0).any():
        raise MimregError(f"{name} contains negative labels; map classes to 0..C-1")
    return y


def check_split(train_x, train_y, test_x, test_y, num_classes: int | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Validate a train/test split and return it with the class count (`num_classes`, or max train
    label + 1 when not given)."""
    train_x = as_features(train_x, "train_x")
    test_x = as_features(test_x, "test_x")
    train_y = as_labels(train_y, train_x.shape[0], "train_y")
    test_y = as_labels(test_y, test_x.shape[0], "test_y")
    if train_x.shape[1] != test_x.shape[1]:
        raise MimregError(
            f"train_x has {train_x.shape[1]} feature dims but test_x has {test_x.shape[1]}; "
            "extract both splits with the same encoder and pooling"
        )
    num_classes = num_classes or int(train_y.max()) + 1
    if max(int(train_y.max()), int(test_y.max())) >= num_classes:
        raise MimregError(
            f"test_y contains class {int(test_y.max())} but train_y only has classes 0..{num_classes - 1}; "
            "use the same class-to-index mapping for both splits"
        )
    return train_x, train_y, test_x, test_y, num_classes


def top_k_percent(logits_or_scores: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Percentage of rows whose label is among the k highest scores."""
    top = logits_or_scores.topk(k, dim=1).indices
    hits = (top == labels[:, None]).any(dim=1)
    return 100.0 * hits.float().mean().item()
