"""T-REGS: minimum-spanning-tree length regularization (maximise the MST length, soft unit sphere)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from mimreg.bounds import bounded
from mimreg.regularizers.base import Regularizer, register, require_features
from mimreg.numerics import fp32_loss

BACKENDS = ("auto", "numpy", "torch", "boruvka")
# on CUDA, Boruvka from this many points: below it Prim's n - 1 launches are few (see benchmarks/mst.py)
BORUVKA_MIN_POINTS = 64


def _selection_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _prim_parents_numpy(dist: np.ndarray) -> np.ndarray:
    """Prim's algorithm on a dense (n, n) array: parent[u] for u != 0 (parent[0] = 0, the root).

    `best[u]` is the distance from u to the tree (inf once u is in it); `mask` is inf on the tree,
    so a new row never lowers `best` of a tree vertex. n - 1 iterations of O(n) vector work.
    """
    n = dist.shape[0]
    best = dist[0].copy()
    mask = np.zeros(n, dtype=dist.dtype)
    best[0] = mask[0] = np.inf
    parent = np.zeros(n, dtype=np.int64)
    row = np.empty(n, dtype=dist.dtype)
    closer = np.empty(n, dtype=bool)
    for _ in range(n - 1):
        v = best.argmin()
        best[v] = mask[v] = np.inf
        np.add(dist[v], mask, out=row)
        np.less(row, best, out=closer)
        parent[closer] = v
        np.minimum(best, row, out=best)
    return parent


def _prim_parents_torch(dist: torch.Tensor) -> torch.Tensor:
    """The same Prim loop in torch ops on dist's device, without host synchronisation.

    The vertex v stays a (1,) device tensor (argmin, index_fill_, index_select, where): nothing is
    read back to the host inside the loop, so on CUDA the n - 1 iterations only queue kernels.
    """
    n = dist.shape[0]
    inf = float("inf")
    state = torch.zeros(2, n, dtype=dist.dtype, device=dist.device)
    best, mask = state[0], state[1]  # filled together at v with one index_fill_ on dim 1
    best.copy_(dist[0])
    state[:, 0] = inf
    parent = torch.zeros(n, dtype=torch.long, device=dist.device)
    row = torch.empty(n, dtype=dist.dtype, device=dist.device)
    closer = torch.empty(n, dtype=torch.bool, device=dist.device)
    for _ in range(n - 1):
        v = torch.argmin(best, dim=0, keepdim=True)
        state.index_fill_(1, v, inf)
        torch.add(dist.index_select(0, v).squeeze(0), mask, out=row)
        torch.lt(row, best, out=closer)
        torch.where(closer, v, parent, out=parent)
        torch.minimum(best, row, out=best)
    return parent


def _boruvka_edges(dist: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Boruvka's algorithm on a dense (n, n) matrix, in ceil(log2 n) rounds of whole-matrix ops and
    without host synchronisation: edges (lo, hi), lo < hi, in the order of the vertex they retired.

    Edges are compared by the strict total order (length, lower index, higher index), so the tree
    is the unique minimum spanning tree under that order (ties and duplicates included: never a
    cycle). Each component is labelled by one of its vertices. A round finds every vertex's lightest
    edge out of its component (a row minimum; the first index among equal lengths is exactly the
    order above), every component's lightest one (two scatter-mins: length, then lo * n + hi), and
    merges the components along them: each points to the component across its edge, the smaller
    of each pair choosing one another becomes the root, pointer jumping finds the roots. A
    component that merges into another retires its label, and stores its edge under it; the n - 1
    labels that retire are every vertex but the last root.
    """
    n, device = dist.shape[0], dist.device
    weights = torch.minimum(dist, dist.T)  # exactly symmetric, whatever rounding the input had
    vertex = torch.arange(n, device=device)
    comp = vertex.clone()
    edge_lo, edge_hi = torch.zeros_like(vertex), torch.zeros_like(vertex)
    none = n * n  # a key above every edge's lo * n + hi
    depth = max(1, math.ceil(math.log2(n)))  # rounds (components at least halve) and pointer jumps
    for _ in range(depth):
        length, other = torch.where(comp[:, None] == comp[None, :], float("inf"), weights).min(dim=1)
        cmin = torch.full_like(length, float("inf")).scatter_reduce(0, comp, length, "amin")
        lightest = (length == cmin[comp]) & torch.isfinite(length)
        key = torch.where(lightest, torch.minimum(vertex, other) * n + torch.maximum(vertex, other), none)
        ckey = torch.full_like(vertex, none).scatter_reduce(0, comp, key, "amin")
        has_edge = ckey < none
        ckey = torch.where(has_edge, ckey, 0)
        lo, hi = ckey // n, ckey % n
        across = torch.where(has_edge, torch.where(comp[lo] == vertex, comp[hi], comp[lo]), vertex)
        root = ~has_edge | ((across[across] == vertex) & (vertex < across))
        parent = torch.where(root, vertex, across)
        retired = ~root
        edge_lo, edge_hi = torch.where(retired, lo, edge_lo), torch.where(retired, hi, edge_hi)
        for _ in range(depth):
            parent = parent[parent]
        comp = parent[comp]
        if device.type == "cpu" and not bool(has_edge.any()):  # no sync to spare on the GPU
            break
    order = torch.argsort((vertex == comp[0]).to(torch.uint8), stable=True)[: n - 1]
    return edge_lo[order], edge_hi[order]


def mst_edges(sq_dist: torch.Tensor, *, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Edges (i, j) of the exact minimum spanning tree of the complete graph on n points.

    sq_dist: (n, n) symmetric pairwise distances, or squared distances (the same tree); zero
    off-diagonal entries (duplicate points) are ordinary edges of length 0, and the diagonal is
    ignored. Chosen under no_grad on detached values in fp32 (fp64 stays fp64). Returns two int64
    tensors of shape (n - 1,) on sq_dist's device; empty for n <= 1. Where lengths tie, the trees
    differ but their lengths are equal.

    backend: Prim, n - 1 sequential O(n) steps: "numpy" on the CPU memory (zero copy; about 4x less
    per-step overhead than torch ops on CPU), "torch" as device tensor ops (no host syncs, but
    n - 1 steps of kernel launches on CUDA); both return i the parent and j the child (j = 1..n-1,
    vertex 0 the root). "boruvka": ceil(log2 n) rounds of whole-matrix ops (no host syncs), i < j.
    "auto": numpy on the CPU; on CUDA boruvka from BORUVKA_MIN_POINTS points, torch below.
    """
    if sq_dist.dim() != 2 or sq_dist.shape[0] != sq_dist.shape[1]:
        raise ValueError(f"mst_edges needs a square (n, n) matrix, got shape {tuple(sq_dist.shape)}")
    if backend not in BACKENDS:
        raise ValueError(f"mst_edges backend must be one of {BACKENDS}, got {backend!r}")
    n, device = sq_dist.shape[0], sq_dist.device
    if n <= 1:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return empty, empty.clone()
    if backend == "auto":
        backend = "numpy" if device.type == "cpu" else "boruvka" if n >= BORUVKA_MIN_POINTS else "torch"
    with torch.no_grad():
        dist = sq_dist.detach().to(_selection_dtype(sq_dist))
        if backend == "boruvka":
            return _boruvka_edges(dist)
        if backend == "numpy":
            parent = torch.from_numpy(_prim_parents_numpy(dist.cpu().contiguous().numpy())).to(device)
        else:
            parent = _prim_parents_torch(dist.contiguous())
    return parent[1:], torch.arange(1, n, device=device)


def selection_sq_distances(z: torch.Tensor) -> torch.Tensor:
    """(n, d) -> (n, n) squared distances for choosing edges, detached, fp32 (fp64 stays fp64).

    Uses the Gram form |a|^2 + |b|^2 - 2 a.b (one matmul, the O(n^2 d) part) after centring the
    points, which removes the cancellation a common offset would cause.
    """
    with torch.no_grad():
        x = z.detach().to(_selection_dtype(z))
        x = x - x.mean(dim=0, keepdim=True)
        sq = (x * x).sum(dim=1)
        return torch.addmm(sq.unsqueeze(1), x, x.T, alpha=-2.0).add_(sq.unsqueeze(0))


@fp32_loss
def mst_length(z: torch.Tensor, eps: float = 1e-12, backend: str = "auto") -> torch.Tensor:
    """E(MST(Z)) = sum over MST edges of ||z_i - z_j||_2 (T-REGS slides, Euclidean, unsquared).

    z: (n, d), any float dtype; computed in fp32 (fp64 stays fp64). Returns a scalar. The edges are
    chosen on detached distances (`mst_edges`); only their lengths are differentiated, recomputed
    on the n - 1 pairs as sqrt(max(||z_i - z_j||^2, eps)), so the gradient is
    sum over edges (i, j) of (z_i - z_j) / ||z_i - z_j|| and duplicates (length 0) give 0, not NaN.
    n = 1 gives 0. backend: as for `mst_edges`.
    """
    if z.dim() != 2:
        raise ValueError(f"mst_length needs a (n, d) tensor, got shape {tuple(z.shape)}")
    x = z.to(_selection_dtype(z))
    i, j = mst_edges(selection_sq_distances(x), backend=backend)
    diff = x[i] - x[j]
    return (diff * diff).sum(dim=1).clamp_min(eps).sqrt().sum()


@fp32_loss
def t_reg_loss(z: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """T-REGS slides, L_E(Z) = -(1/n) E(MST(Z)). z: (n, d); fp32 inside; returns a scalar."""
    return -mst_length(z, eps) / z.shape[0]


@fp32_loss
def sphere_loss(z: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """T-REGS slides, L_S(Z) = (1/n) sum_i (||z_i||_2 - 1)^2 (soft unit sphere).

    z: (n, d); fp32 inside (fp64 stays fp64); the norm is sqrt(max(||z_i||^2, eps)) so a zero row
    has a finite gradient. Returns a scalar.
    """
    x = z.to(_selection_dtype(z))
    norm = (x * x).sum(dim=1).clamp_min(eps).sqrt()
    return (norm - 1).pow(2).mean()


@fp32_loss
def tregs_loss(z: torch.Tensor, edge_weight: float = 0.2, sphere_weight: float = 8e-4,
               eps: float = 1e-12) -> torch.Tensor:
    """T-REG (T-REGS slides): gamma * L_E(Z) + lambda * L_S(Z) on one view's embeddings.

    z: (n, d) embeddings of one view (n >= 1); fp32 inside (fp64 stays fp64). Returns a scalar.
    Defaults are the slides' best L_MSE + T-REGS coefficients (Tab. 4): gamma 0.2, lambda 8e-4.
    """
    return edge_weight * t_reg_loss(z, eps) + sphere_weight * sphere_loss(z, eps)


@dataclass
class MstOptions:
    features: list[str] = field(default_factory=lambda: ["emb.0", "emb.1"])  # one view each
    edge_weight: float = bounded(0.2, ge=0)  # gamma, on L_E = -(1/n) MST length
    sphere_weight: float = bounded(8e-4, ge=0)  # lambda, on L_S = mean (||z|| - 1)^2
    eps: float = bounded(1e-12, gt=0)


@register
class Mst(Regularizer):
    """T-REGS: for each listed feature (the projector embeddings of each view, not normalised),
    gamma * L_E + lambda * L_S, summed over the features; `weight` multiplies the total.

    The MST is built separately per feature over that feature's batch. With gather (the default)
    the batch is the global batch of all processes, so the MST spans the global batch and L_E is
    divided by the global n; with gather: false each process builds the tree of its local batch.
    The MST length grows with n, so the balance of gamma and lambda depends on which one is used.
    """

    name = "mst"
    paper = "T-REGS (Mordacq et al., NeurIPS 2025), slides: L_E and L_S"
    summary = "maximise the length of each view's minimum spanning tree on a soft unit sphere"
    Options = MstOptions
    default_weight = 1.0

    @classmethod
    def check_options(cls, options: MstOptions, key: str) -> None:
        super().check_options(options, key)
        require_features(options.features, key, "[emb.0, emb.1]")

    def reads(self) -> tuple[str, ...]:
        return tuple(self.options.features)

    def loss(self, *features: torch.Tensor) -> torch.Tensor:
        o = self.options
        terms = [tregs_loss(f, o.edge_weight, o.sphere_weight, o.eps) for f in features]
        return torch.stack(terms).sum()
