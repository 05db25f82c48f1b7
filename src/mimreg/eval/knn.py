"""k-nearest-neighbour classification on frozen features: the three standard protocols."""

from __future__ import annotations

import torch

from mimreg.feature_checks import check_split
from mimreg.errors import MimregError
from mimreg.neighbours import (METRICS, VOTES, cosine_weights, distance_weights, knn_classify, majority_votes,
                               nearest, weighted_votes)

__all__ = ["METRICS", "VOTES", "knn_classify", "knn_protocols"]


def knn_protocols(train_x, train_y, test_x, test_y, *, chunk: int = 1024, device=None) -> dict:
    """Top-1 of the three standard k-NN protocols: 10-NN Euclidean majority (MAGMA), 20-NN Euclidean
    weighted by 1/(d + 1e-5) (solo-learn) and 20-NN cosine, T=0.07 (InstDisc/DINO).

    Two passes over the train features (Euclidean and cosine 20 nearest; the 10-NN vote reads the
    first 10 of the 20), streamed to `device` (default: train_x's) in chunks, so they may be
    memory-mapped from a feature store. The same votes as `knn_classify` with each protocol's k."""
    train_x, train_y, test_x, test_y, num_classes = check_split(train_x, train_y, test_x, test_y)
    if train_x.shape[0] < 20:
        raise MimregError(f"k=20 must be between 1 and the number of training rows ({train_x.shape[0]}); "
                          "embed more training images")
    dev = torch.device(device) if device is not None else train_x.device
    labels, test_y = train_y.to(dev), test_y.to(dev)
    top1 = lambda pred: 100.0 * int((pred == test_y).sum()) / test_y.numel()  # noqa: E731
    top, idx, query_sq = nearest(train_x, test_x, 20, "euclidean", device=dev, chunk=chunk)
    near = labels[idx]
    result = {"knn10_euclidean": top1(majority_votes(near[:, :10], num_classes)),
              "knn20_euclidean_weighted": top1(weighted_votes(distance_weights(top, query_sq, 1e-5), near,
                                                              num_classes))}
    top, idx, _ = nearest(train_x, test_x, 20, "cosine", device=dev, chunk=chunk)
    result["knn20_cosine"] = top1(weighted_votes(cosine_weights(top, 0.07), labels[idx], num_classes))
    return result
