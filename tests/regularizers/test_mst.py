import itertools
import math

import numpy as np
import pytest
import torch
from scipy.sparse.csgraph import minimum_spanning_tree

from mimreg.errors import ConfigError
from mimreg.regularizers import REGULARIZERS, mst_edges, mst_length, sphere_loss, t_reg_loss, tregs_loss
from mimreg.regularizers.mst import Mst, MstOptions


def exact_dist(z):
    z = z.double()
    return ((z[:, None] - z[None]) ** 2).sum(-1).sqrt()


def edge_length(dist, i, j):
    return dist[i, j].sum().item()


def brute_force_mst_length(dist):
    """Min total length over all spanning trees: every (n-1)-subset of edges that connects the graph."""
    n = dist.shape[0]
    pairs = list(itertools.combinations(range(n), 2))
    best = math.inf
    for subset in itertools.combinations(pairs, n - 1):
        root = list(range(n))

        def find(a):
            while root[a] != a:
                a = root[a]
            return a

        joined = 0
        for a, b in subset:
            ra, rb = find(a), find(b)
            if ra != rb:
                root[ra] = rb
                joined += 1
        if joined == n - 1:
            best = min(best, sum(dist[a, b].item() for a, b in subset))
    return best


def is_spanning_tree(i, j, n):
    assert i.shape == j.shape == (n - 1,)
    root = list(range(n))

    def find(a):
        while root[a] != a:
            a = root[a]
        return a

    for a, b in zip(i.tolist(), j.tolist()):
        ra, rb = find(a), find(b)
        if ra == rb:
            return False
        root[ra] = rb
    return True


def test_unit_square_and_line_hand_computed():
    square = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    assert mst_length(square).item() == pytest.approx(3.0)
    line = torch.tensor([[0.0], [5.0], [1.0], [3.0]])  # consecutive gaps 1, 2, 2
    assert mst_length(line).item() == pytest.approx(5.0)
    i, j = mst_edges(exact_dist(line))
    assert {frozenset(e) for e in zip(i.tolist(), j.tolist())} == {frozenset({0, 2}), frozenset({2, 3}),
                                                                  frozenset({3, 1})}
    assert t_reg_loss(square).item() == pytest.approx(-3.0 / 4)


@pytest.mark.parametrize("n,d", [(3, 2), (10, 3), (57, 8), (200, 32), (300, 2)])
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_matches_scipy(n, d, backend):
    z = torch.randn(n, d, generator=torch.Generator().manual_seed(n * d))
    dist = exact_dist(z)  # distinct random points: no zero off-diagonal entry for scipy to drop
    expected = minimum_spanning_tree(dist.numpy()).sum()
    i, j = mst_edges(dist, backend=backend)
    assert is_spanning_tree(i, j, n)
    assert edge_length(dist, i, j) == pytest.approx(expected, rel=1e-12)
    assert edge_length(dist, *mst_edges(dist**2, backend=backend)) == pytest.approx(expected, rel=1e-12)
    assert mst_length(z).item() == pytest.approx(expected, rel=1e-5)


def test_both_backends_agree_on_fp32():
    dist = exact_dist(torch.randn(150, 6)).float()
    a, b = mst_edges(dist, backend="numpy"), mst_edges(dist, backend="torch")
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("n", [3, 4, 5, 6])
def test_brute_force_tiny(n):
    for seed in range(3):
        z = torch.randn(n, 3, generator=torch.Generator().manual_seed(seed))
        dist = exact_dist(z)
        assert edge_length(dist, *mst_edges(dist)) == pytest.approx(brute_force_mst_length(dist), rel=1e-12)


def test_offset_cloud_is_exact_in_fp32():
    # a common offset 1e4 times the spread: selection centres the points before the Gram form
    z = torch.randn(64, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    expected = minimum_spanning_tree(exact_dist(z).numpy()).sum()
    assert mst_length((z + 1e4).float()).item() == pytest.approx(expected, rel=1e-3)


def test_gradient_is_sum_of_unit_edge_vectors():
    z = torch.randn(12, 5, dtype=torch.float64, requires_grad=True)
    mst_length(z).backward()
    i, j = mst_edges(exact_dist(z.detach()))
    expected = torch.zeros_like(z)
    unit = (z[i] - z[j]).detach()
    unit = unit / unit.norm(dim=1, keepdim=True)
    expected.index_add_(0, i, unit)
    expected.index_add_(0, j, -unit)
    assert torch.allclose(z.grad, expected, atol=1e-12)


def test_gradcheck_float64():
    z = torch.randn(7, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    z.requires_grad_(True)
    assert torch.autograd.gradcheck(mst_length, (z,))
    assert torch.autograd.gradcheck(lambda x: tregs_loss(x, 0.3, 0.5), (z,))


@pytest.mark.parametrize("case", ["one", "two", "duplicates", "all_equal", "zeros"])
def test_degenerate_batches_are_finite(case):
    z = {"one": torch.randn(1, 4), "two": torch.randn(2, 4), "all_equal": torch.ones(6, 4),
         "zeros": torch.zeros(6, 4)}.get(case)
    if case == "duplicates":
        z = torch.randn(6, 4)
        z[1] = z[0]
        z[4] = z[3]
    z.requires_grad_(True)
    loss = tregs_loss(z, 1.0, 1.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()
    length = mst_length(z.detach())
    if case == "one":
        assert length.item() == 0 and mst_edges(torch.zeros(1, 1))[0].numel() == 0
    if case == "two":
        assert length.item() == pytest.approx((z[0] - z[1]).norm().item(), rel=1e-6)
    if case in ("all_equal", "zeros"):
        assert length.item() < 1e-4


def test_duplicates_are_tree_edges_of_length_zero():
    # scipy would drop the zero entries and return a forest; Prim keeps them as edges
    z = torch.tensor([[0.0, 0.0], [0.0, 0.0], [3.0, 4.0], [3.0, 4.0]], dtype=torch.float64)
    i, j = mst_edges(exact_dist(z))
    assert is_spanning_tree(i, j, 4)
    assert mst_length(z).item() == pytest.approx(5.0)


# ---------------------------------------------------------------- Boruvka (the CUDA selection)
def kruskal_under_total_order(dist) -> set[tuple[int, int]]:
    """The unique MST when edges are ordered by (length, lower index, higher index): Kruskal."""
    n = dist.shape[0]
    lo, hi = np.triu_indices(n, 1)
    order = np.lexsort((hi, lo, dist.numpy()[lo, hi]))  # last key first: length, then lo, then hi
    root = list(range(n))

    def find(a):
        while root[a] != a:
            root[a] = root[root[a]]
            a = root[a]
        return a

    tree = set()
    for k in order:
        a, b = find(int(lo[k])), find(int(hi[k]))
        if a != b:
            root[a] = b
            tree.add((int(lo[k]), int(hi[k])))
    return tree


def edge_set(i, j) -> set[tuple[int, int]]:
    return {(min(a, b), max(a, b)) for a, b in zip(i.tolist(), j.tolist())}


def tie_cases() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(4)
    grid2 = torch.cartesian_prod(torch.arange(7.0), torch.arange(7.0))  # every length repeats
    grid3 = torch.cartesian_prod(*[torch.arange(4.0)] * 3)
    repeated = torch.randn(40, 5, generator=g).repeat(3, 1)  # each point three times: zero lengths
    repeated = repeated[torch.randperm(120, generator=g)]
    return {"random": torch.randn(300, 6, generator=g), "grid2d": grid2, "grid3d": grid3,
            "duplicates": repeated, "all_equal": torch.ones(9, 3)}


@pytest.mark.parametrize("case", list(tie_cases()))
def test_boruvka_is_the_mst_under_its_total_order_with_prims_length(case):
    z = tie_cases()[case].double()
    n, dist = len(z), exact_dist(z)
    i, j = mst_edges(dist, backend="boruvka")
    assert i.dtype == j.dtype == torch.long and bool((i < j).all())
    assert is_spanning_tree(i, j, n)
    assert edge_set(i, j) == kruskal_under_total_order(dist)  # exactly the edges, ties included
    prim = mst_edges(dist, backend="numpy")
    assert edge_length(dist, i, j) == pytest.approx(edge_length(dist, *prim), rel=1e-12, abs=1e-12)
    if case == "random":  # a unique tree: Prim's and scipy's edges themselves
        assert edge_set(i, j) == edge_set(*prim)
        rows, cols = minimum_spanning_tree(dist.numpy()).nonzero()
        assert edge_set(i, j) == edge_set(torch.from_numpy(rows), torch.from_numpy(cols))
        fp32 = dist.float()
        assert edge_set(*mst_edges(fp32, backend="boruvka")) == edge_set(*mst_edges(fp32, backend="numpy"))


def test_boruvka_gradient_equals_prims():
    z = torch.randn(64, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    grads = []
    for backend in ("numpy", "boruvka"):
        x = z.clone().requires_grad_(True)
        mst_length(x, backend=backend).backward()
        grads.append(x.grad)
    # the same edges, so the same sum of unit vectors (summed in another order)
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=1e-12)


def test_fp32_inside_under_low_precision_inputs():
    z = torch.randn(32, 8)
    for dtype in (torch.float16, torch.bfloat16):
        low = (z * 300).to(dtype)  # squared distances overflow fp16
        for out in (mst_length(low), t_reg_loss(low), sphere_loss(low), tregs_loss(low)):
            assert out.dtype == torch.float32 and torch.isfinite(out)
        assert mst_length(low).item() == pytest.approx(mst_length(low.float()).item(), rel=1e-6)
        assert mst_edges(exact_dist(low.float()).to(dtype))[0].dtype == torch.long


def test_sphere_loss_hand_computed():
    z = torch.tensor([[3.0, 4.0], [0.0, 1.0], [0.0, 0.0]])  # norms 5, 1, 0
    assert sphere_loss(z).item() == pytest.approx((16 + 0 + 1) / 3)
    # MST: (0,0)-(0,1) of length 1 and (0,1)-(3,4) of length sqrt(18)
    expected = -0.2 * (1 + math.sqrt(18)) / 3 + 8e-4 * 17 / 3
    assert tregs_loss(z, 0.2, 8e-4).item() == pytest.approx(expected, rel=1e-6)


def test_bad_inputs():
    with pytest.raises(ValueError, match="square"):
        mst_edges(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="backend"):
        mst_edges(torch.zeros(3, 3), backend="cuda")


def test_point_cloud_becomes_a_regular_simplex():
    # T-REG alone, n <= d + 1: the MST length is maximal at a regular simplex on the sphere,
    # where every pairwise cosine is -1/(n-1)
    n, d = 8, 16
    z = (0.1 * torch.randn(n, d, generator=torch.Generator().manual_seed(0))).requires_grad_(True)
    optimizer = torch.optim.Adam([z], lr=0.01)
    for _ in range(300):
        loss = tregs_loss(z, edge_weight=1.0, sphere_weight=1.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    f = torch.nn.functional.normalize(z.detach(), dim=1)
    cosines = (f @ f.T)[~torch.eye(n, dtype=torch.bool)]
    assert abs(cosines.mean().item() + 1 / (n - 1)) < 0.01
    assert cosines.std().item() < 0.03
    norms = z.detach().norm(dim=1)
    assert norms.std().item() < 0.01 * norms.mean().item()  # all on one sphere


def test_large_batch_is_fast_enough():
    z = torch.randn(1024, 16, generator=torch.Generator().manual_seed(0))
    dist = exact_dist(z).float()
    i, j = mst_edges(dist)
    assert is_spanning_tree(i, j, 1024)
    expected = minimum_spanning_tree(dist.numpy()).sum()
    assert edge_length(dist.double(), i, j) == pytest.approx(expected, rel=1e-5)


@pytest.mark.cuda
def test_cuda_selection_matches_cpu_without_host_syncs():
    z = torch.randn(512, 32, generator=torch.Generator().manual_seed(0))
    dist = exact_dist(z).float()
    expected = edge_length(dist.double(), *mst_edges(dist))
    on_gpu = dist.cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        i, j = mst_edges(on_gpu)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert i.is_cuda and j.is_cuda
    assert edge_length(dist.double(), i.cpu(), j.cpu()) == pytest.approx(expected, rel=1e-6)
    zg = z.cuda().requires_grad_(True)
    tregs_loss(zg).backward()
    assert torch.isfinite(zg.grad).all()


@pytest.mark.cuda
@pytest.mark.parametrize("case", [*tie_cases(), "random4096"])
def test_cuda_boruvka_is_the_cpu_tree_without_host_syncs(case):
    z = torch.randn(4096, 32, generator=torch.Generator().manual_seed(2)) if case == "random4096" else tie_cases()[case]
    dist = exact_dist(z).float()
    on_gpu = dist.cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        i, j = mst_edges(on_gpu)  # auto: Boruvka from 64 points, Prim's torch loop below
    finally:
        torch.cuda.set_sync_debug_mode("default")
    i, j = i.cpu(), j.cpu()
    assert is_spanning_tree(i, j, len(z))
    prim = edge_length(dist.double(), *mst_edges(dist))
    assert edge_length(dist.double(), i, j) == pytest.approx(prim, rel=1e-6, abs=1e-6)
    if len(z) >= 64 and len(z) <= 300:
        assert bool((i < j).all()) and edge_set(i, j) == kruskal_under_total_order(dist)


def test_module_reads_window_weight_and_sums_features():
    assert REGULARIZERS["mst"] is Mst
    reg = Mst(MstOptions(), weight=None, start_epoch=1, duration=2)
    assert reg.reads() == ("emb.0", "emb.1")
    assert reg.weight == 1.0
    assert [reg.weight_at(e) for e in range(4)] == [0, 1.0, 1.0, 0]
    feats = {"emb.0": torch.randn(16, 8), "emb.1": torch.randn(16, 8), "cls": torch.randn(16, 8)}
    expected = tregs_loss(feats["emb.0"], 0.2, 8e-4) + tregs_loss(feats["emb.1"], 0.2, 8e-4)
    assert reg(feats).item() == pytest.approx(expected.item(), rel=1e-6)
    one = Mst(MstOptions(features=["cls"], edge_weight=1.0, sphere_weight=0.5), weight=3.0)
    assert one.reads() == ("cls",)
    assert one(feats).item() == pytest.approx(tregs_loss(feats["cls"], 1.0, 0.5).item(), rel=1e-6)
    assert one.weight_at(0) == 3.0  # the trainee multiplies the total by the weight
    with pytest.raises(ConfigError, match="at least one"):
        Mst(MstOptions(features=[]))


def test_batch_of_one_is_a_clear_error():
    reg = Mst(MstOptions(), gather=False)
    with pytest.raises(ConfigError, match="batch-wide"):
        reg({"emb.0": torch.randn(1, 8), "emb.1": torch.randn(1, 8)})


def test_module_gradient_reaches_every_view():
    feats = {k: torch.randn(10, 6, requires_grad=True) for k in ("emb.0", "emb.1")}
    Mst(MstOptions())(feats).backward()
    assert all(torch.isfinite(f.grad).all() and f.grad.abs().sum() > 0 for f in feats.values())


def test_options_are_checked_by_the_regularizer_at_load():
    """load_config asks the regularizer (check_options), with the key a user writes."""
    from mimreg.config import load_config

    with pytest.raises(ConfigError, match=r"^regularizers\.mst\.features must name at least one feature"):
        load_config("byol+t-regs", ["regularizers.mst.features=[]"])
    with pytest.raises(ConfigError, match=r"^regularizers\.mst\.edge_weight=-1\.0 is out of range: it must be >= 0"):
        Mst(MstOptions(edge_weight=-1.0))  # built directly: the same declared range as at load
