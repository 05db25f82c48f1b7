import math
from statistics import NormalDist

import numpy as np
import pytest
import torch

from mimreg.config import load_config
from mimreg.errors import ConfigError
from mimreg.regularizers import REGULARIZERS, visreg_loss
from mimreg.regularizers import visreg as visreg_module
from mimreg.regularizers.visreg import (Visreg, VisregOptions, visreg_center_loss, visreg_scale_loss,
                                        visreg_shape_loss)
from mimreg.slices import unit_slices

from test_coding_rate import JOINT_SETS, short_run


def reference(z: np.ndarray, slices: np.ndarray, eps: float = 1e-4) -> float:
    """lightly's VISReg terms written with loops and the standard library's normal quantiles."""
    n, d = z.shape
    mean = [sum(z[i, j] for i in range(n)) / n for j in range(d)]
    std = [math.sqrt(sum((z[i, j] - mean[j]) ** 2 for i in range(n)) / n) for j in range(d)]
    center = sum(m * m for m in mean) / d
    scale = sum((1 - s) ** 2 for s in std) / d
    quantiles = [NormalDist().inv_cdf(i / (n + 1)) for i in range(1, n + 1)]
    shape = 0.0
    for k in range(slices.shape[1]):
        proj = sorted(sum((z[i, j] - mean[j]) / (std[j] + eps) * slices[j, k] for j in range(d)) for i in range(n))
        shape += sum((p - q) ** 2 for p, q in zip(proj, quantiles))
    return center + scale + shape / (n * slices.shape[1])


def test_center_and_scale_hand_computed():
    z = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert visreg_center_loss(z).item() == pytest.approx((2 ** 2 + 3 ** 2) / 2)
    assert visreg_scale_loss(z).item() == pytest.approx(0.0)  # biased std 1 in both dimensions
    z = torch.tensor([[0.0, 0.0], [2.0, 4.0]])  # std (1, 2)
    assert visreg_scale_loss(z).item() == pytest.approx((0 + 1) / 2)


def test_shape_one_slice_hand_computed():
    # dimension 0 standardises to (-1, 1) / (1 + eps); the quantiles at 1/3, 2/3 are -q, q
    z = torch.tensor([[0.0, 5.0], [2.0, 7.0]], dtype=torch.float64)
    q = NormalDist().inv_cdf(2 / 3)
    slice_x = torch.tensor([[1.0], [0.0]], dtype=torch.float64)
    assert visreg_shape_loss(z, slice_x).item() == pytest.approx((1 / (1 + 1e-4) - q) ** 2, rel=1e-6)
    # the reversed order in the batch is sorted first: the same value
    assert visreg_shape_loss(z.flip(0), slice_x).item() == pytest.approx((1 / (1 + 1e-4) - q) ** 2, rel=1e-6)


@pytest.mark.parametrize("n,d,m", [(7, 3, 5), (12, 4, 2)])
def test_matches_independent_formula(n, d, m):
    g = torch.Generator().manual_seed(n + d + m)
    z = torch.randn(n, d, generator=g, dtype=torch.float64) * 2 + 0.5
    slices = unit_slices(d, m, seed=3, device="cpu", dtype=torch.float64)
    assert torch.allclose(slices.norm(dim=0), torch.ones(m, dtype=torch.float64))
    # gaussian_quantiles are computed in fp32 as lightly: ~1e-7 relative
    assert visreg_loss(z, slices).item() == pytest.approx(reference(z.numpy(), slices.numpy()), rel=1e-6)
    weighted = visreg_loss(z, slices, scale_weight=2.0, shape_weight=0.5, center_weight=3.0)
    parts = 2 * visreg_scale_loss(z) + 0.5 * visreg_shape_loss(z, slices) + 3 * visreg_center_loss(z)
    assert weighted.item() == pytest.approx(parts.item(), rel=1e-12)


def test_invariances_and_what_the_terms_measure():
    z = torch.randn(64, 8, dtype=torch.float64)
    slices = unit_slices(8, 16, seed=0, device="cpu", dtype=torch.float64)
    shape = visreg_shape_loss(z, slices).item()
    assert visreg_shape_loss(z[torch.randperm(64)], slices).item() == pytest.approx(shape, rel=1e-12)
    assert visreg_shape_loss(3 * z + 7, slices).item() == pytest.approx(shape, rel=1e-3)  # standardised (eps aside)
    assert visreg_scale_loss(z + 7).item() == pytest.approx(visreg_scale_loss(z).item(), rel=1e-9)
    gaussian = torch.randn(4096, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    collapsed = gaussian[:, :1] * torch.ones(1, 8, dtype=torch.float64)  # rank one, each dimension N(0, 1)
    assert visreg_shape_loss(gaussian, slices).item() < 0.01
    assert visreg_shape_loss(collapsed, slices).item() > 0.2
    assert visreg_scale_loss(gaussian).item() < 1e-3 and visreg_center_loss(gaussian).item() < 1e-3


def test_gradcheck_center_and_scale_float64():
    z = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(visreg_center_loss, (z,))
    assert torch.autograd.gradcheck(visreg_scale_loss, (z,))


def test_shape_gradient_holds_the_std_fixed():
    """Eq. 2's stop-gradient: the gradient is that of the same loss with the std frozen at its value,
    checked against central differences of that frozen-std function (float64)."""
    z0 = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    slices = unit_slices(3, 4, seed=1, device="cpu", dtype=torch.float64)
    std0 = z0.std(dim=0, unbiased=False)
    q = torch.tensor([NormalDist().inv_cdf(i / 7) for i in range(1, 7)], dtype=torch.float64)

    def frozen(z):
        proj = ((z - z.mean(dim=0)) / (std0 + 1e-4) @ slices).sort(dim=0).values
        return (proj - q[:, None]).square().mean().item()

    z = z0.clone().requires_grad_(True)
    visreg_shape_loss(z, slices).backward()
    numeric = torch.zeros_like(z0)
    for i in range(6):
        for j in range(3):
            step = torch.zeros_like(z0)
            step[i, j] = 1e-6
            numeric[i, j] = (frozen(z0 + step) - frozen(z0 - step)) / 2e-6
    assert torch.allclose(z.grad, numeric, atol=1e-6 * numeric.abs().max().item())


def test_fp32_inside_under_bf16():
    z = torch.randn(16, 8)
    slices = unit_slices(8, 4, seed=0, device="cpu")
    assert visreg_loss(z.bfloat16(), slices).dtype == torch.float32


def test_module_defaults_slices_per_call_and_per_process(monkeypatch):
    assert REGULARIZERS["visreg"] is Visreg
    reg = Visreg(VisregOptions())
    assert (reg.reads(), reg.weight, reg.gather) == (("cls",), 9.0, False)  # lightly: lambda 0.9, not gathered
    assert Visreg(VisregOptions(), gather=True).gather
    z = torch.randn(16, 8, dtype=torch.float64)
    first, second = reg({"cls": z}), reg({"cls": z})
    assert int(reg.slice_steps.step) == 2 and first.item() != second.item()  # fresh slices at every call
    resumed = Visreg(VisregOptions())
    resumed.load_state_dict(reg.state_dict())  # a checkpoint keeps the count: the next slices follow on
    assert resumed({"cls": z}).item() == pytest.approx(reg({"cls": z}).item(), rel=1e-12)
    expected = visreg_loss(z, unit_slices(8, 4096, seed=1, device="cpu", dtype=torch.float64))
    assert second.item() == pytest.approx(expected.item(), rel=1e-12)
    monkeypatch.setattr(visreg_module.dist, "rank", lambda: 1)
    local, shared = Visreg(VisregOptions(seed=5)), Visreg(VisregOptions(seed=5), gather=True)
    one = lambda seed: visreg_loss(z, unit_slices(8, 4096, seed=seed, device="cpu", dtype=torch.float64)).item()
    assert local({"cls": z}).item() == pytest.approx(one(5 + 1_000_003), rel=1e-12)  # its own slices (the paper's)
    assert shared({"cls": z}).item() == pytest.approx(one(5), rel=1e-12)  # the same on every process
    views = Visreg(VisregOptions(features=["emb.0", "emb.1"], slices=8))
    feats = {"emb.0": torch.randn(10, 4, dtype=torch.float64), "emb.1": torch.randn(10, 4, dtype=torch.float64)}
    slices = unit_slices(4, 8, seed=1_000_003, device="cpu", dtype=torch.float64)
    mean = (visreg_loss(feats["emb.0"], slices) + visreg_loss(feats["emb.1"], slices)) / 2
    assert views(feats).item() == pytest.approx(mean.item(), rel=1e-12)


def test_options_are_refused_with_the_key():
    with pytest.raises(ConfigError, match=r"^regularizers\.visreg\.slices=0 is out of range: it must be >= 1"):
        load_config("mae+visreg", ["regularizers.visreg.slices=0"])
    with pytest.raises(ConfigError, match=r"^regularizers\.visreg\.features must name at least one"):
        load_config("mae+visreg", ["regularizers.visreg.features=[]"])
    with pytest.raises(ConfigError, match=r"^regularizers\.visreg\.eps=0\.0 is out of range: it must be > 0"):
        Visreg(VisregOptions(eps=0.0))
    with pytest.raises(ValueError, match="n >= 2"):
        visreg_loss(torch.randn(1, 4), torch.randn(4, 2))


def test_gather_defaults_to_the_regularizer_and_a_config_overrides_it():
    """Resolved at load (a run's config.yaml then says which it used, and older runs that saved
    `gather: true` resume unchanged)."""
    assert load_config("mae+visreg").regularizers[0].gather is False
    assert load_config("u-mae").regularizers[0].gather is True
    assert load_config("mae+visreg", ["regularizers.visreg.gather=true"]).regularizers[0].gather is True


@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize("recipe", ["mae+visreg", "simclr"])
def test_composes_with_mae_and_simclr(recipe, tiny_config, tmp_path):
    """A few steps on tiny synthetic data: the term is logged every step, finite, and the total goes down."""
    if recipe == "mae+visreg":
        cfg = tiny_config(recipe, "data.subset=96", "train.epochs=2", "optim.lr=1e-3")
    else:
        cfg = load_config("digits/simclr", [*JOINT_SETS, "monitor=[]",
                                            "regularizers=[{name: visreg, weight: 1.5, features: [emb.0, emb.1]}]"])
    train = short_run(cfg, tmp_path / "run")
    terms = [r["reg/visreg"] for r in train]
    assert len(terms) == 6 and all(math.isfinite(t) and t > 0 for t in terms)
    assert train[0]["weight/visreg"] == 1.5
    assert train[-1]["loss"] < train[0]["loss"], [r["loss"] for r in train]
