import math

import numpy as np
import pytest
import torch

from mimreg.config import load_config
from mimreg.errors import ConfigError
from mimreg.regularizers import REGULARIZERS, unit_slices, sigreg_loss
from mimreg.regularizers.sigreg import Sigreg, SigregOptions, epps_pulley_quadrature

pytestmark = pytest.mark.usefixtures("single_thread")


def reference_statistic(views: np.ndarray, directions: np.ndarray, knots: int, t_max: float) -> float:
    """The paper's form, written apart from the implementation: complex ECF on the symmetric grid
    [-t_max, t_max] (2 knots - 1 points), trapezoid rule by a loop, N times, mean over views and slices."""
    grid = np.linspace(-t_max, t_max, 2 * knots - 1)
    stats = []
    for z in views:
        for a in directions.T:
            x = z @ a
            integrand = [abs(np.exp(1j * t * x).mean() - math.exp(-t * t / 2)) ** 2 * math.exp(-t * t / 2)
                         for t in grid]
            area = sum((grid[k + 1] - grid[k]) * (integrand[k] + integrand[k + 1]) / 2 for k in range(len(grid) - 1))
            stats.append(len(x) * area)
    return float(np.mean(stats))


def test_one_slice_two_knots_by_hand():
    # t = (0, 1), weights (dt, dt) x phi = (1, e^-1/2); at t = 0 the ECF is 1 = phi: no error.
    # x = (0, pi/2): ECF(1) = (cos 0 + cos pi/2)/2 + i (sin 0 + sin pi/2)/2 = 0.5 + 0.5i
    x = torch.tensor([[0.0], [math.pi / 2]], dtype=torch.float64)
    e = math.exp(-0.5)
    expected = 2 * e * ((0.5 - e) ** 2 + 0.25)
    got = sigreg_loss(x, torch.ones(1, 1, dtype=torch.float64), knots=2, t_max=1.0)
    assert got.item() == pytest.approx(expected, rel=1e-12)


def test_quadrature_is_the_official_one():
    t, phi, weights = epps_pulley_quadrature(17, 3.0, torch.float64)
    assert t[1].item() == pytest.approx(3 / 16) and t[-1].item() == 3.0
    dt = 3 / 16
    assert weights[0].item() == pytest.approx(dt) and weights[-1].item() == pytest.approx(dt * math.exp(-4.5))
    assert weights[8].item() == pytest.approx(2 * dt * math.exp(-0.5 * 1.5 ** 2))
    # the weights integrate phi over [-3, 3]: sqrt(2 pi) (erf(3/sqrt 2)) up to the trapezoid's error
    assert weights @ phi == pytest.approx(math.sqrt(math.pi) * math.erf(3), rel=2e-3)


@pytest.mark.parametrize("knots,t_max", [(17, 3.0), (5, 5.0)])
def test_matches_the_complex_symmetric_form(knots, t_max):
    g = torch.Generator().manual_seed(0)
    views = torch.randn(3, 20, 6, generator=g, dtype=torch.float64) * 1.3 + 0.2
    a = unit_slices(6, 4, seed=5).double()
    got = sigreg_loss(views, a, knots=knots, t_max=t_max)
    assert got.item() == pytest.approx(reference_statistic(views.numpy(), a.numpy(), knots, t_max), rel=1e-10)


def test_gaussian_sample_is_small_and_collapse_is_large():
    g = torch.Generator().manual_seed(1)
    a = unit_slices(16, 64, seed=0)
    gaussian = sigreg_loss(torch.randn(4096, 16, generator=g), a).item()
    # under the null, E = integral of (1 - phi^2) phi over [-3, 3] ~ 1.05 whatever N
    assert 0.5 < gaussian < 2.0
    collapsed = sigreg_loss(torch.zeros(4096, 16), a).item()  # ECF = 1: N x integral (1 - phi)^2 phi
    t, phi, w = epps_pulley_quadrature(17, 3.0, torch.float64)
    assert collapsed == pytest.approx(4096 * (w @ (1 - phi) ** 2).item(), rel=1e-5)
    assert collapsed > 1000 * gaussian
    too_wide = sigreg_loss(3 * torch.randn(4096, 16, generator=g), a).item()
    shifted = sigreg_loss(torch.randn(4096, 16, generator=g) + 1, a).item()
    assert too_wide > 100 * gaussian and shifted > 100 * gaussian


def test_slices_are_unit_and_seeded():
    a = unit_slices(8, 32, seed=3)
    assert torch.allclose(a.norm(dim=0), torch.ones(32))
    torch.manual_seed(0)
    b = unit_slices(8, 32, seed=3)
    torch.manual_seed(1)
    assert torch.equal(b, unit_slices(8, 32, seed=3))  # the global RNG plays no part
    assert torch.equal(a, b) and not torch.equal(a, unit_slices(8, 32, seed=4))
    assert torch.equal(unit_slices(8, 32, seed=3, dtype=torch.float64), a.double())


def test_permutation_invariant_and_fp32_from_bf16():
    z = torch.randn(2, 16, 5)
    a = unit_slices(5, 8, seed=0)
    ref = sigreg_loss(z, a)
    assert sigreg_loss(z[:, torch.randperm(16)], a).item() == pytest.approx(ref.item(), rel=1e-5)
    assert sigreg_loss(z.bfloat16(), a).dtype == torch.float32


def test_gradcheck_float64():
    z = torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True)
    a = unit_slices(3, 4, seed=0, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: sigreg_loss(x, a, knots=5), (z,))


def test_gradient_descent_gaussianises():
    g = torch.Generator().manual_seed(2)
    z = (torch.randn(256, 4, generator=g) * 0.1).requires_grad_(True)
    opt = torch.optim.Adam([z], lr=0.05)
    start = sigreg_loss(z, unit_slices(4, 64, seed=0)).item()
    for step in range(150):
        opt.zero_grad()
        sigreg_loss(z, unit_slices(4, 64, seed=step)).backward()
        opt.step()
    end = sigreg_loss(z, unit_slices(4, 64, seed=999)).item()
    assert start > 50 and end < 3
    assert z.detach().std(dim=0).sub(1).abs().max() < 0.25


def test_module_averages_views_with_one_set_of_slices_per_call():
    reg = Sigreg(SigregOptions(features=["emb.0", "emb.1", "emb.2"], slices=16), gather=True)
    assert reg.weight == 0.05 and reg.reads() == ("emb.0", "emb.1", "emb.2")
    z = [torch.randn(8, 6) for _ in range(3)]
    features = {f"emb.{v}": x for v, x in enumerate(z)}
    first, second = reg(features), reg(features)
    assert int(reg.slice_steps.step) == 2
    for step, value in enumerate((first, second)):
        a = unit_slices(6, 16, seed=step)
        per_view = [sigreg_loss(x, a) for x in z]
        assert value.item() == pytest.approx(sum(per_view).item() / 3, rel=1e-6)
    assert first.item() != pytest.approx(second.item(), rel=1e-3)  # new slices each call


def test_resume_continues_the_slice_sequence():
    reg = Sigreg(SigregOptions(slices=8))
    features = {"emb.0": torch.randn(8, 4), "emb.1": torch.randn(8, 4)}
    for _ in range(3):
        reg(features)
    expected = reg(features)
    resumed = Sigreg(SigregOptions(slices=8))
    resumed(features)  # a fresh module already used once: the checkpoint's count replaces it
    state = {k: v for k, v in reg.state_dict().items()}
    state["slice_steps.step"] = torch.tensor(3)
    resumed.load_state_dict(state)
    assert resumed(features).item() == expected.item()


def test_options_are_refused_with_their_key():
    with pytest.raises(ConfigError, match=r"regularizers\.sigreg\.slices=0 is out of range"):
        load_config("simclr", ["regularizers=[{name: sigreg, slices: 0}]"])
    with pytest.raises(ConfigError, match=r"regularizers\.sigreg\.knots=1 is out of range"):
        load_config("simclr", ["regularizers=[{name: sigreg, knots: 1}]"])
    with pytest.raises(ConfigError, match=r"regularizers\.sigreg\.features must name at least one"):
        load_config("simclr", ["regularizers=[{name: sigreg, features: []}]"])
    assert REGULARIZERS["sigreg"] is Sigreg


JOINT_SETS = ("data.name=synthetic", "data.img_size=32", "model.arch=vit_micro", "model.patch_size=8",
              "optim.batch_size=32", "data.subset=128", "train.epochs=1", "train.device=cpu",
              "train.progress=false", "train.log_every=1", "train.monitor_every=1000",
              "method.proj_hidden_dim=64", "method.proj_output_dim=32")


@pytest.mark.parametrize("recipe", ["mae+sigreg", "simclr+sigreg"])
def test_composes_with_mae_and_simclr(recipe, tmp_path, tiny_config):
    """A few steps of the recipes through the real loop: the term is logged, finite, and its weight
    is the one the total adds (mae: the cls token; simclr: each view's projector embeddings)."""
    from mimreg.engine.loop import pretrain
    from mimreg.engine.metrics import read_metrics

    if recipe == "mae+sigreg":
        cfg = tiny_config(recipe, data__subset=128, train__monitor_every=1000)
        own = ["rec"]
    else:
        cfg = load_config(f"digits/{recipe}", list(JOINT_SETS))
        own = ["nt_xent"]
    assert cfg.regularizers[0].name == "sigreg" and cfg.regularizers[0].weight == 0.05
    pretrain(cfg, tmp_path / "run")
    records = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "train"]
    assert len(records) == 4
    for r in records:
        assert math.isfinite(r["reg/sigreg"]) and r["reg/sigreg"] > 0
        assert r["loss"] == pytest.approx(sum(r[k] for k in own) + 0.05 * r["reg/sigreg"], rel=1e-5)


@pytest.mark.cuda
def test_cuda_calls_after_the_first_do_not_sync_the_host():
    """Only the first call reads the step counter from the device; later ones seed from its mirror."""
    reg = Sigreg(SigregOptions(slices=64)).cuda()
    features = {f"emb.{v}": torch.randn(32, 16, device="cuda", requires_grad=True) for v in range(2)}
    reg(features)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        value = reg(features)
        value.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert int(reg.slice_steps.step) == 2 and torch.isfinite(value)
    assert torch.isfinite(features["emb.0"].grad).all()
