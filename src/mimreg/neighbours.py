"""k-nearest-neighbour votes on feature matrices: the k-NN evaluation's classifier and the online
monitor's (kept below both the engine and the evaluations, which each use it)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mimreg.errors import MimregError
from mimreg.feature_checks import check_split

METRICS = ("euclidean", "cosine")
VOTES = ("majority", "distance")


# Train rows moved to the device and compared with every test row at once: 65536 x 1024 float32
# distances are 256 MB, and a memory-mapped train bank is read from disk once, in this many rows.
BANK_CHUNK = 65536


def _offset(train_x: torch.Tensor, bank_chunk: int) -> torch.Tensor:
    """The train mean, summed a chunk at a time in float64 (the bank may be memory-mapped)."""
    total = sum(train_x[s : s + bank_chunk].double().sum(0) for s in range(0, train_x.shape[0], bank_chunk))
    return (total / train_x.shape[0]).float()[None, :]


def nearest(train_x: torch.Tensor, test_x: torch.Tensor, k: int, metric: str, *, device, chunk: int,
            bank_chunk: int = BANK_CHUNK) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The k nearest train rows of every test row, nearest first, on `device`: their score (cosine
    similarity, or |t|^2 - 2 q.t after centring on the train mean) (N_test, k), their train index
    (N_test, k), and each centred query's |q|^2 (N_test,) (zeros for cosine).

    The train bank is streamed `bank_chunk` rows at a time (read once, so it may live on disk) and
    each test chunk keeps a running top-k."""
    cosine = metric == "cosine"
    # Distances are translation invariant; removing the common offset shrinks the norms and with
    # them the float32 cancellation error of the Gram trick.
    offset = None if cosine else _offset(train_x, bank_chunk).to(device)
    queries = []
    for start in range(0, test_x.shape[0], chunk):
        q = test_x[start : start + chunk].to(device)
        queries.append(F.normalize(q, dim=1) if cosine else q - offset)
    n = test_x.shape[0]
    best = torch.full((n, k), -float("inf") if cosine else float("inf"), device=device)
    best_idx = torch.zeros((n, k), dtype=torch.int64, device=device)
    for bank_start in range(0, train_x.shape[0], bank_chunk):
        bank = train_x[bank_start : bank_start + bank_chunk].to(device)
        bank = F.normalize(bank, dim=1) if cosine else bank - offset
        bank_sq = None if cosine else (bank * bank).sum(1)[None, :]
        for i, q in enumerate(queries):
            rows = slice(i * chunk, i * chunk + q.shape[0])
            # |q - t|^2 minus |q|^2: the order along each row needs neither the query's norm nor a sqrt.
            score = q @ bank.T if cosine else bank_sq - 2.0 * q @ bank.T
            top, idx = score.topk(min(k, bank.shape[0]), dim=1, largest=cosine, sorted=True)
            merged = torch.cat([best[rows], top], dim=1)
            merged_idx = torch.cat([best_idx[rows], idx + bank_start], dim=1)
            best[rows], pick = merged.topk(k, dim=1, largest=cosine, sorted=True)
            best_idx[rows] = merged_idx.gather(1, pick)
    query_sq = torch.zeros(n, device=device) if cosine else torch.cat([(q * q).sum(1) for q in queries])
    return best, best_idx, query_sq


def majority_votes(nn_labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """One vote per neighbour (sorted nearest first); a tie goes to the tied class holding the
    nearest neighbour."""
    counts = torch.zeros(nn_labels.shape[0], num_classes, dtype=torch.int64, device=nn_labels.device)
    counts.scatter_add_(1, nn_labels, torch.ones_like(nn_labels))
    tied = counts == counts.max(dim=1, keepdim=True).values
    # Neighbours are sorted nearest first; argmax returns the first True.
    first_tied = tied.gather(1, nn_labels).int().argmax(dim=1)
    return nn_labels.gather(1, first_tied[:, None]).squeeze(1)


def weighted_votes(weights: torch.Tensor, nn_labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The class with the largest summed weight (an exact tie to the lower class)."""
    scores = torch.zeros(nn_labels.shape[0], num_classes, dtype=weights.dtype, device=weights.device)
    return scores.scatter_add_(1, nn_labels, weights).argmax(dim=1)


def distance_weights(top_score: torch.Tensor, query_sq: torch.Tensor, eps: float) -> torch.Tensor:
    """solo-learn's 1/(distance + eps) from `nearest`'s Euclidean scores."""
    return 1.0 / ((top_score + query_sq[:, None]).clamp_min(0.0).sqrt() + eps)


def cosine_weights(top_sim: torch.Tensor, temperature: float) -> torch.Tensor:
    """exp(similarity / temperature), less the row maximum: exp() stays finite for small
    temperatures, and a common factor per row cannot change the argmax."""
    return ((top_sim - top_sim[:, :1]) / temperature).exp()


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
    device=None,
) -> dict:
    """k-NN top-1 accuracy (percent) of test features against labelled train features.

    metric="euclidean", vote="majority": majority vote of the k nearest (MAGMA: k=10). A tie
    between classes goes to the tied class whose member is nearest to the query (for k=1 this
    is plain 1-NN). vote="distance": each neighbour votes 1/(distance + eps), as solo-learn's
    WeightedKNNClassifier (k=20, eps=1e-5). metric="cosine": rows L2-normalised, each of the k most similar neighbours votes
    with weight exp(cos / temperature) (InstDisc/DINO: k=20, T=0.07); an exact score tie goes
    to the lower class index. Runs on `device` (default: train_x's); test rows go there `chunk`
    at a time and the train rows BANK_CHUNK at a time, so the train features may be memory-mapped
    from disk and memory is O(chunk x BANK_CHUNK) per step. Exact distance ties at the k-th neighbour are resolved by torch.topk.
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

    dev = torch.device(device) if device is not None else train_x.device
    top, idx, query_sq = nearest(train_x, test_x, k, metric, device=dev, chunk=chunk)
    nn_labels = train_y.to(dev)[idx]
    if metric == "cosine":
        pred = weighted_votes(cosine_weights(top, temperature), nn_labels, num_classes)
    elif vote == "distance":
        pred = weighted_votes(distance_weights(top, query_sq, eps), nn_labels, num_classes)
    else:
        pred = majority_votes(nn_labels, num_classes)
    correct = int((pred == test_y.to(dev)).sum())

    result = {"top1": 100.0 * correct / test_x.shape[0], "k": k, "metric": metric}
    if metric == "cosine":
        result["temperature"] = temperature
    else:
        result["vote"] = vote
    return result
