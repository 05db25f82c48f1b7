import math

import pytest
import torch
import torch.nn.functional as F

from mimreg.methods import VICReg, vicreg_terms
from mimreg.methods.vicreg import VICRegOptions, covariance_loss, variance_loss
from mimreg.models import ViTEncoder

from support import assert_close_at_scale

pytestmark = pytest.mark.usefixtures("single_thread")


def test_variance_hand_computed():
    # column 0: (-1, 1), unbiased var 2 -> std > 1 -> hinge 0; column 1: (0, 0.6), var 0.18
    z = torch.tensor([[-1.0, 0.0], [1.0, 0.6]])
    expected = (0.0 + (1 - math.sqrt(0.18 + 1e-4))) / 2
    assert variance_loss(z).item() == pytest.approx(expected, rel=1e-6)
    # the std uses the unbiased variance: (0, 0.6, 0, 0.6) has var 0.12 (biased would be 0.09)
    z4 = torch.tensor([[0.0], [0.6], [0.0], [0.6]])
    assert variance_loss(z4).item() == pytest.approx(1 - math.sqrt(0.12 + 1e-4), rel=1e-6)


def test_variance_hinge_is_zero_above_unit_std():
    g = torch.Generator().manual_seed(0)
    assert variance_loss(3 * torch.randn(64, 8, generator=g)).item() == 0.0


def test_collapsed_batch_hits_the_eps_floor_in_each_view():
    z = torch.ones(6, 4, requires_grad=True)
    assert variance_loss(z).item() == pytest.approx(1 - math.sqrt(1e-4), rel=1e-6)
    terms = vicreg_terms(z, z)
    # solo-learn form: the two views' std terms are summed, not averaged (no /2)
    assert terms["variance"].item() == pytest.approx(2 * (1 - 0.01), rel=1e-6)
    assert terms["covariance"].item() == 0.0 and terms["invariance"].item() == 0.0
    sum(terms.values()).backward()
    assert torch.isfinite(z.grad).all()


def test_covariance_hand_computed_3x2():
    # centred columns (-1, 0, 1) and (-1, -2, 3): cov_01 = (1 + 0 + 3) / (3 - 1) = 2
    z = torch.tensor([[1.0, 2.0], [2.0, 1.0], [3.0, 6.0]])
    # off-diagonal squares 2^2 twice, divided by d = 2
    assert covariance_loss(z).item() == pytest.approx(4.0, rel=1e-6)
    # the diagonal does not count: decorrelated columns of any variance give 0
    assert covariance_loss(torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]]) * 7).item() == 0.0


def test_invariance_is_mse_loss_and_global_batch_feeds_variance_and_covariance():
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    a1, a2 = torch.randn(10, 6, generator=g), torch.randn(10, 6, generator=g)
    local = vicreg_terms(z1, z2)
    assert local["invariance"].item() == pytest.approx(F.mse_loss(z1, z2).item(), rel=1e-6)
    assert local["variance"].item() == pytest.approx((variance_loss(z1) + variance_loss(z2)).item(), rel=1e-6)
    assert local["covariance"].item() == pytest.approx((covariance_loss(z1) + covariance_loss(z2)).item(), rel=1e-6)
    mixed = vicreg_terms(z1, z2, a1, a2)
    assert mixed["invariance"].item() == local["invariance"].item()
    assert mixed["variance"].item() == pytest.approx((variance_loss(a1) + variance_loss(a2)).item(), rel=1e-6)
    assert mixed["covariance"].item() == pytest.approx((covariance_loss(a1) + covariance_loss(a2)).item(), rel=1e-6)


def test_gradcheck_float64_variance_and_covariance():
    g = torch.Generator().manual_seed(2)
    z = (0.3 * torch.randn(5, 3, generator=g, dtype=torch.float64)).requires_grad_(True)  # std < 1: hinge on
    assert torch.autograd.gradcheck(variance_loss, (z,))
    assert torch.autograd.gradcheck(covariance_loss, (z,))


def test_gradcheck_float64_vicreg_terms():
    g = torch.Generator().manual_seed(3)
    z1 = (0.3 * torch.randn(5, 3, generator=g, dtype=torch.float64)).requires_grad_(True)
    z2 = (0.3 * torch.randn(5, 3, generator=g, dtype=torch.float64)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: sum(vicreg_terms(a, b).values()), (z1, z2))


def test_vicreg_terms_gradient_matches_float64_reference():
    g = torch.Generator().manual_seed(4)
    z1, z2 = 0.4 * torch.randn(6, 4, generator=g, dtype=torch.float64), 0.4 * torch.randn(6, 4, generator=g, dtype=torch.float64)
    a = [z1.float().requires_grad_(True), z2.float().requires_grad_(True)]
    sum(vicreg_terms(*a).values()).backward()
    b = [z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)]
    reference = F.mse_loss(*b) + variance_loss(b[0]) + variance_loss(b[1]) + covariance_loss(b[0]) + covariance_loss(b[1])
    reference.backward()
    scale = max(y.grad.abs().max().item() for y in b)  # fp32 rounding is relative to the whole gradient
    for x, y in zip(a, b):
        assert_close_at_scale(x.grad.double(), y.grad, 1e-5, scale)


def test_bf16_inputs_give_fp32_terms():
    g = torch.Generator().manual_seed(5)
    z1, z2 = torch.randn(8, 4, generator=g).bfloat16(), torch.randn(8, 4, generator=g).bfloat16()
    assert all(v.dtype == torch.float32 for v in vicreg_terms(z1, z2).values())


def test_terms_stay_fp32_under_autocast():
    g = torch.Generator().manual_seed(6)
    z1, z2 = torch.randn(16, 8, generator=g), torch.randn(16, 8, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms = vicreg_terms(z1, z2)
    assert all(v.dtype == torch.float32 for v in terms.values())


def test_method_weights_the_terms():
    torch.manual_seed(0)
    model = VICReg(ViTEncoder("vit_micro", 32, 8),
                   VICRegOptions(sim_weight=2.0, var_weight=3.0, cov_weight=0.5, proj_hidden_dim=32, proj_output_dim=16))
    assert [m.out_features for m in model.projector if isinstance(m, torch.nn.Linear)] == [32, 32, 16]
    out = model([torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)])
    terms = vicreg_terms(out.features["emb.0"], out.features["emb.1"])
    assert set(out.losses) == {"invariance", "variance", "covariance"}
    for name, weight in (("invariance", 2.0), ("variance", 3.0), ("covariance", 0.5)):
        assert out.losses[name].item() == pytest.approx(weight * terms[name].item(), rel=1e-6)
    defaults = VICRegOptions()
    assert (defaults.sim_weight, defaults.var_weight, defaults.cov_weight) == (25.0, 25.0, 1.0)
