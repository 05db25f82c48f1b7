import math

import numpy as np
import pytest
import torch

from mimreg.config import load_config
from mimreg.errors import ConfigError
from mimreg.regularizers import REGULARIZERS, koleo_loss
from mimreg.regularizers.koleo import KoLeo, KoLeoOptions
from support import regularized_run

pytestmark = pytest.mark.usefixtures("single_thread")


def koleo_by_loops(z: np.ndarray, eps: float = 1e-8) -> float:
    """DINOv2's formula written out: each row normalised, its nearest other row by Euclidean
    distance, PairwiseDistance's eps added to the difference, then -mean log(d + eps)."""
    f = [row / max(np.sqrt((row * row).sum()), eps) for row in z.astype(np.float64)]
    total = 0.0
    for i, fi in enumerate(f):
        j = min((k for k in range(len(f)) if k != i), key=lambda k: ((fi - f[k]) ** 2).sum())
        d = np.sqrt(((fi - f[j] + eps) ** 2).sum())
        total += math.log(d + eps)
    return -total / len(f)


def test_hand_computed_circle():
    # unit directions at 0, 60 and 180 degrees (rows of different lengths: normalised first):
    # nearest distances 1, 1 and 2 sin(60) = sqrt(3) -> -(0 + 0 + log sqrt 3) / 3
    z = torch.tensor([[3.0, 0.0], [0.25, math.sqrt(3) / 4], [-7.0, 0.0]], dtype=torch.float64)
    assert koleo_loss(z, eps=1e-15).item() == pytest.approx(-math.log(3) / 6, abs=1e-12)
    square = torch.tensor([[1.0, 0], [0, 2.0], [-1.0, 0], [0, -0.5]], dtype=torch.float64)
    assert koleo_loss(square, eps=1e-15).item() == pytest.approx(-0.5 * math.log(2), abs=1e-12)


@pytest.mark.parametrize("shape", [(2, 3), (7, 4), (33, 16)])
def test_matches_an_independent_loop_with_dinov2_eps(shape):
    z = torch.randn(*shape, generator=torch.Generator().manual_seed(shape[0]), dtype=torch.float64)
    assert koleo_loss(z).item() == pytest.approx(koleo_by_loops(z.numpy()), rel=1e-12)
    assert koleo_loss(z.float()).item() == pytest.approx(koleo_by_loops(z.numpy()), rel=1e-5)


def test_gradcheck_float64():
    z = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(koleo_loss, (z,))


def test_invariant_to_batch_order_and_row_scale_fp32_from_bf16():
    z = torch.randn(16, 8, dtype=torch.float64)
    ref = koleo_loss(z).item()
    assert koleo_loss(z[torch.randperm(16)]).item() == pytest.approx(ref, rel=1e-12)
    assert koleo_loss(z * torch.rand(16, 1, dtype=torch.float64).add(0.1) * 50).item() == pytest.approx(ref, rel=1e-9)
    assert koleo_loss(z.bfloat16()).dtype == torch.float32


def test_degenerate_batches_are_finite():
    dup = torch.ones(4, 3, requires_grad=True)  # all identical: distance sqrt(3) eps, not 0
    loss = koleo_loss(dup)
    loss.backward()
    assert loss.item() == pytest.approx(-math.log(math.sqrt(3) * 1e-8 + 1e-8), rel=1e-5)
    assert torch.isfinite(dup.grad).all()
    zero = torch.zeros(3, 2, requires_grad=True)
    koleo_loss(zero).backward()
    assert torch.isfinite(zero.grad).all()
    # two antipodal points: each one's neighbour is the other (distance 2); DINOv2's -1 on the
    # diagonal would tie with the other's dot -1 and pick the row itself
    assert koleo_loss(torch.tensor([[1.0, 0.0], [-2.0, 0.0]])).item() == pytest.approx(-math.log(2), rel=1e-6)
    with pytest.raises(ValueError, match="B >= 2"):
        koleo_loss(torch.randn(1, 3))


def test_gradient_spreads_points():
    g = torch.Generator().manual_seed(0)
    z = (torch.randn(32, 8, generator=g) * 0.1 + torch.tensor([1.0] + [0.0] * 7)).requires_grad_(True)
    opt = torch.optim.SGD([z], lr=0.2)
    start = koleo_loss(z).item()
    for _ in range(50):
        opt.zero_grad()
        koleo_loss(z).backward()
        opt.step()
    assert koleo_loss(z).item() < start - 1.0  # 1.69 -> 0.21: nearest neighbours over e times further apart


def test_module_defaults_and_per_feature_sum():
    assert REGULARIZERS["koleo"] is KoLeo
    reg = KoLeo(KoLeoOptions())
    assert (reg.weight, reg.gather, reg.reads()) == (0.1, False, ("cls",))  # DINOv2: weight 0.1, per GPU
    assert KoLeo(KoLeoOptions(), gather=True).gather is True
    feats = {"emb.0": torch.randn(8, 5), "emb.1": torch.randn(8, 5)}
    both = KoLeo(KoLeoOptions(features=["emb.0", "emb.1"]))
    expected = koleo_loss(feats["emb.0"]) + koleo_loss(feats["emb.1"])
    assert both(feats).item() == pytest.approx(expected.item(), rel=1e-6)
    with pytest.raises(ConfigError, match="batch-wide"):
        reg({"cls": torch.randn(1, 4)})


def test_options_are_refused_with_the_key():
    with pytest.raises(ConfigError, match=r"^regularizers\.koleo\.features must name at least one feature"):
        load_config("mae", ["regularizers=[{name: koleo, features: []}]"])
    with pytest.raises(ConfigError, match=r"^regularizers\.koleo\.eps=0\.0 is out of range: it must be > 0"):
        load_config("mae", ["regularizers=[{name: koleo, eps: 0.0}]"])
    cfg = load_config("mae", ["regularizers=[{name: koleo}]"])
    assert cfg.regularizers[0].gather is False  # left out: resolved at load to the regularizer's (DINOv2: per GPU)


@pytest.mark.parametrize("recipe,features,method_terms", [("mae", ["cls"], ["rec"]),
                                                          ("simclr", ["emb.0", "emb.1"], ["nt_xent"])])
def test_composes_with_mae_and_simclr(tmp_path, recipe, features, method_terms, tiny_config):
    rows = regularized_run(recipe, {"name": "koleo", "features": features}, tmp_path / "run", tiny_config)
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert math.isfinite(r["reg/koleo"]) and r["weight/koleo"] == 0.1
        assert r["loss"] == pytest.approx(sum(r[t] for t in method_terms) + 0.1 * r["reg/koleo"], rel=1e-5)


def test_gather_left_out_takes_each_regularizers_own_default(tiny_config):
    """`gather` left out builds koleo per process (DINOv2) and the others gathered; an
    explicit value wins."""
    from mimreg.engine.build import build_trainee

    def built(*regs):
        return [(r.name, r.gather) for r in build_trainee(tiny_config("mae", regularizers=list(regs))).regularizers]

    assert built({"name": "koleo"}, {"name": "uniformity"}, {"name": "vcreg"}) == [
        ("koleo", False), ("uniformity", True), ("vcreg", True)]
    assert built({"name": "koleo", "gather": True}, {"name": "uniformity", "gather": False}) == [
        ("koleo", True), ("uniformity", False)]
