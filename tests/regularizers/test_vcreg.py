import math

import numpy as np
import pytest
import torch

from mimreg.config import load_config
from mimreg.errors import ConfigError
from mimreg.methods import vicreg as vicreg_method
from mimreg.regularizers import REGULARIZERS, vcreg_loss
from mimreg.regularizers import vcreg as vcreg_module
from mimreg.regularizers.vcreg import Vcreg, VcregOptions
from support import regularized_run

pytestmark = pytest.mark.usefixtures("single_thread")


def vcreg_by_loops(z: np.ndarray, var_weight: float, cov_weight: float, eps: float = 1e-4) -> float:
    """VICReg Eq. 1-4 entry by entry: unbiased variances and covariances of the columns."""
    n, d = z.shape
    cols = [z[:, j].astype(np.float64) for j in range(d)]
    means = [sum(c) / n for c in cols]
    cov = [[sum((cols[i][k] - means[i]) * (cols[j][k] - means[j]) for k in range(n)) / (n - 1)
            for j in range(d)] for i in range(d)]
    v = sum(max(0.0, 1 - math.sqrt(cov[j][j] + eps)) for j in range(d)) / d
    c = sum(cov[i][j] ** 2 for i in range(d) for j in range(d) if i != j) / d
    return var_weight * v + cov_weight * c


def test_hand_computed():
    # two rows +-(1, 1): variances 2 (std above 1: no hinge), covariance 2 -> 2 * 2^2 / D=2 = 4
    big = torch.tensor([[1.0, 1.0], [-1.0, -1.0]], dtype=torch.float64)
    assert vcreg_loss(big).item() == pytest.approx(4.0, rel=1e-12)
    # 10x smaller: variances 0.02, hinge 1 - sqrt(0.0201) per dimension; covariance term 2 * 0.02^2 / 2
    small = big / 10
    expected = 25 * (1 - math.sqrt(0.0201)) + 1 * 0.02 ** 2
    assert vcreg_loss(small).item() == pytest.approx(expected, rel=1e-12)
    assert vcreg_loss(small, var_weight=0.0, cov_weight=3.0).item() == pytest.approx(3 * 0.02 ** 2, rel=1e-12)


@pytest.mark.parametrize("shape,weights", [((2, 3), (25.0, 1.0)), ((9, 5), (1.0, 0.04)), ((16, 7), (0.0, 2.0))])
def test_matches_an_independent_loop(shape, weights):
    z = 0.7 * torch.randn(*shape, generator=torch.Generator().manual_seed(shape[0]), dtype=torch.float64)
    expected = vcreg_by_loops(z.numpy(), *weights)
    assert vcreg_loss(z, *weights).item() == pytest.approx(expected, rel=1e-12)
    assert vcreg_loss(z.float(), *weights).item() == pytest.approx(expected, rel=1e-5)


def test_uses_the_vicreg_methods_terms():
    """One definition of the terms: the regularizer calls the vicreg method's functions."""
    assert vcreg_module.variance_loss is vicreg_method.variance_loss
    assert vcreg_module.covariance_loss is vicreg_method.covariance_loss
    z = torch.randn(10, 6, dtype=torch.float64)
    terms = vicreg_method.vicreg_terms(z, z)  # both views the same z: each term twice
    expected = 25 * terms["variance"] / 2 + 1 * terms["covariance"] / 2
    assert vcreg_loss(z).item() == pytest.approx(expected.item(), rel=1e-12)


def test_gradcheck_float64():
    z = torch.randn(6, 4, dtype=torch.float64).mul(0.3).requires_grad_(True)  # stds below 1: the hinge is on
    assert torch.autograd.gradcheck(vcreg_loss, (z,))


def test_invariant_to_batch_order_and_translation_fp32_from_bf16():
    z = torch.randn(12, 5, dtype=torch.float64) * 0.5
    ref = vcreg_loss(z).item()
    assert vcreg_loss(z[torch.randperm(12)]).item() == pytest.approx(ref, rel=1e-12)
    assert vcreg_loss(z + torch.randn(1, 5, dtype=torch.float64) * 100).item() == pytest.approx(ref, rel=1e-9)
    assert vcreg_loss(z.bfloat16()).dtype == torch.float32


def test_degenerate_batches_are_finite():
    same = torch.ones(4, 3, requires_grad=True)  # zero variance: std sqrt(eps) = 0.01, hinge 0.99
    loss = vcreg_loss(same)
    loss.backward()
    assert loss.item() == pytest.approx(25 * 0.99, rel=1e-6) and torch.isfinite(same.grad).all()
    with pytest.raises(ValueError, match="B >= 2"):
        vcreg_loss(torch.randn(1, 3))


def test_gradient_restores_variance_and_decorrelates():
    g = torch.Generator().manual_seed(0)
    z = (torch.randn(64, 1, generator=g) * torch.ones(1, 8) * 0.1 + 0.01 * torch.randn(64, 8, generator=g))
    z.requires_grad_(True)
    opt = torch.optim.SGD([z], lr=2.0)
    for _ in range(200):
        opt.zero_grad()
        vcreg_loss(z).backward()
        opt.step()
    with torch.no_grad():
        std = z.std(dim=0)
        corr = torch.corrcoef(z.T) - torch.eye(8)
    assert std.min().item() > 0.99  # from 0.1
    assert corr.abs().max().item() < 0.01  # from 0.99: all dimensions were one direction


def test_module_defaults_and_refusals():
    assert REGULARIZERS["vcreg"] is Vcreg
    reg = Vcreg(VcregOptions())
    assert (reg.weight, reg.gather, reg.reads()) == (1.0, True, ("cls",))
    assert (reg.options.var_weight, reg.options.cov_weight, reg.options.eps) == (25.0, 1.0, 1e-4)  # VICReg's
    z = torch.randn(8, 5)
    assert Vcreg(VcregOptions(feature="block.1"))({"block.1": z}).item() == pytest.approx(vcreg_loss(z).item())
    with pytest.raises(ConfigError, match=r"^regularizers\.vcreg\.var_weight=-1\.0 is out of range: it must be >= 0"):
        load_config("mae", ["regularizers=[{name: vcreg, var_weight: -1.0}]"])
    with pytest.raises(ConfigError, match=r"^regularizers\.vcreg\.eps=0\.0 is out of range: it must be > 0"):
        load_config("mae", ["regularizers=[{name: vcreg, eps: 0.0}]"])


@pytest.mark.parametrize("recipe,feature,method_terms", [("mae", "mean", ["rec"]), ("simclr", "emb.0", ["nt_xent"])])
def test_composes_with_mae_and_simclr(tmp_path, recipe, feature, method_terms, tiny_config):
    rows = regularized_run(recipe, {"name": "vcreg", "feature": feature, "weight": 0.04}, tmp_path / "run", tiny_config)
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert 0 <= r["reg/vcreg"] < 25 + 1e3 and r["weight/vcreg"] == 0.04
        assert r["loss"] == pytest.approx(sum(r[t] for t in method_terms) + 0.04 * r["reg/vcreg"], rel=1e-5)
