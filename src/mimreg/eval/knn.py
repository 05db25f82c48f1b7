"""k-nearest-neighbour classification on frozen features: the three standard protocols."""

from __future__ import annotations

from mimreg.neighbours import METRICS, VOTES, knn_classify

__all__ = ["METRICS", "VOTES", "knn_classify", "knn_protocols"]


def knn_protocols(train_x, train_y, test_x, test_y, *, chunk: int = 1024) -> dict:
    """Top-1 of the three standard k-NN protocols: 10-NN Euclidean majority (MAGMA), 20-NN Euclidean
    weighted by 1/(d + 1e-5) (solo-learn) and 20-NN cosine, T=0.07 (InstDisc/DINO)."""
    return {
        "knn10_euclidean": knn_classify(train_x, train_y, test_x, test_y, k=10, chunk=chunk)["top1"],
        "knn20_euclidean_weighted": knn_classify(train_x, train_y, test_x, test_y, k=20, vote="distance",
                                                 chunk=chunk)["top1"],
        "knn20_cosine": knn_classify(train_x, train_y, test_x, test_y, k=20, metric="cosine", temperature=0.07,
                                     chunk=chunk)["top1"],
    }
