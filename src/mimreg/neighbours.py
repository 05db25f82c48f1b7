"""k-nearest-neighbour votes on feature matrices: the k-NN evaluation's classifier and the online
monitor's (kept below both the engine and the evaluations, which each use it)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mimreg.errors import MimregError
from mimreg.feature_checks import check_split

METRICS = ("euclidean", "cosine")
VOTES = ("majority", "distance")


def _euclidean_votes(
    test_chunk: torch.Tensor,
    train_x: torch.Tensor,
    train_sq: torch.Tensor,
    train_y: torch.Tensor,
    k: int,
    num_classes: int,
    vote: str,
    eps: float,
) -> torch.Tensor:
    """Vote of the k nearest: one each ("majority"; ties go to the tied class holding the nearest
    neighbour) or 1/(distance + eps) each ("distance", solo-learn; exact ties to the lower class)."""
    # |q - t|^2 minus |q|^2: the order along each row needs neither the query's norm nor a sqrt.
    dist = train_sq - 2.0 * test_chunk @ train_x.T
    top_dist, nn_idx = dist.topk(k, dim=1, largest=False, sorted=True)
    nn_labels = train_y[nn_idx]
    if vote == "distance":
        query_sq = (test_chunk * test_chunk).sum(1, keepdim=True)
        weights = 1.0 / ((top_dist + query_sq).clamp_min(0.0).sqrt() + eps)
        scores = torch.zeros(test_chunk.shape[0], num_classes, dtype=weights.dtype, device=test_chunk.device)
        return scores.scatter_add_(1, nn_labels, weights).argmax(dim=1)
    counts = torch.zeros(test_chunk.shape[0], num_classes, dtype=torch.int64, device=test_chunk.device)
    counts.scatter_add_(1, nn_labels, torch.ones_like(nn_labels))
    tied = counts == counts.max(dim=1, keepdim=True).values
    # Neighbours are sorted nearest first; argmax returns the first True.
    first_tied = tied.gather(1, nn_labels).int().argmax(dim=1)
    return nn_labels.gather(1, first_tied[:, None]).squeeze(1)


def _cosine_votes(
    test_chunk: torch.Tensor,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    k: int,
    num_classes: int,
    temperature: float,
) -> torch.Tensor:
    """Vote of the k most similar, each weighted by exp(similarity / temperature)."""
    sim = test_chunk @ train_x.T
    top_sim, nn_idx = sim.topk(k, dim=1, largest=True, sorted=True)
    # Subtracting the row maximum keeps exp() finite for small temperatures; a common
    # factor per row cannot change the argmax.
    weights = ((top_sim - top_sim[:, :1]) / temperature).exp()
    scores = torch.zeros(test_chunk.shape[0], num_classes, dtype=weights.dtype, device=test_chunk.device)
    scores.scatter_add_(1, train_y[nn_idx], weights)
    return scores.argmax(dim=1)


def knn_classify(
    train_x,
    train_y,
    test_x,
    test_y,
    *,
    k: int = 10,
    metric: str = "euclidean",
    temperature: float = 0.07,
    vote: str = "majority",
    eps: float = 1e-5,
    chunk: int = 1024,
    num_classes: int | None = None,
) -> dict:
    """k-NN top-1 accuracy (percent) of test features against labelled train features.

    metric="euclidean", vote="majority": majority vote of the k nearest (MAGMA: k=10). A tie
    between classes goes to the tied class whose member is nearest to the query (for k=1 this
    is plain 1-NN). vote="distance": each neighbour votes 1/(distance + eps), as solo-learn's
    WeightedKNNClassifier (k=20, eps=1e-5). metric="cosine": rows L2-normalised, each of the k most similar neighbours votes
    with weight exp(cos / temperature) (InstDisc/DINO: k=20, T=0.07); an exact score tie goes
    to the lower class index. Test rows are processed `chunk` at a time, so memory is
    O(chunk x N_train). Exact distance ties at the k-th neighbour are resolved by torch.topk.
    `num_classes` (default: max train label + 1) lets test rows hold classes the train rows lack.
    """
    if metric not in METRICS:
        raise MimregError(f"unknown k-NN metric {metric!r}; use one of {METRICS}")
    if vote not in VOTES or (metric == "cosine" and vote != "majority"):
        raise MimregError(f"vote must be one of {VOTES} with metric 'euclidean' ('cosine' weights by "
                          f"exp(cos / temperature)), got vote={vote!r}, metric={metric!r}")
    if chunk < 1:
        raise MimregError(f"chunk must be at least 1, got {chunk}")
    if metric == "cosine" and not temperature > 0:
        raise MimregError(f"temperature must be positive, got {temperature}")
    train_x, train_y, test_x, test_y, num_classes = check_split(train_x, train_y, test_x, test_y, num_classes)
    if not 1 <= k <= train_x.shape[0]:
        raise MimregError(f"k={k} must be between 1 and the number of training rows ({train_x.shape[0]}); lower k")

    if metric == "cosine":
        train_x = F.normalize(train_x, dim=1)
        test_x = F.normalize(test_x, dim=1)
    else:
        # Distances are translation invariant; removing the common offset shrinks the
        # norms and with them the float32 cancellation error of the Gram trick.
        offset = train_x.mean(dim=0, keepdim=True)
        train_x = train_x - offset
        test_x = test_x - offset
        train_sq = (train_x * train_x).sum(1)[None, :]

    correct = 0
    for start in range(0, test_x.shape[0], chunk):
        queries = test_x[start : start + chunk]
        if metric == "cosine":
            pred = _cosine_votes(queries, train_x, train_y, k, num_classes, temperature)
        else:
            pred = _euclidean_votes(queries, train_x, train_sq, train_y, k, num_classes, vote, eps)
        correct += int((pred == test_y[start : start + chunk]).sum())

    result = {"top1": 100.0 * correct / test_x.shape[0], "k": k, "metric": metric}
    if metric == "cosine":
        result["temperature"] = temperature
    else:
        result["vote"] = vote
    return result
