import math

import pytest
import torch
import torch.nn.functional as F

from mimreg.methods import BYOL, byol_loss
from mimreg.methods.byol import BYOLOptions, cosine_momentum
from mimreg.models import ViTEncoder

pytestmark = pytest.mark.usefixtures("single_thread")


def test_loss_is_two_minus_two_cosine_by_hand():
    p = torch.tensor([[1.0, 0.0], [3.0, 4.0], [0.0, 2.0]])
    z = torch.tensor([[1.0, 1.0], [-3.0, -4.0], [0.0, 0.5]])
    # cosines 1/sqrt(2), -1, 1
    expected = ((2 - 2 / math.sqrt(2)) + 4.0 + 0.0) / 3
    assert byol_loss(p, z).item() == pytest.approx(expected, rel=1e-6)


def test_matches_cosine_similarity_and_is_scale_invariant():
    g = torch.Generator().manual_seed(0)
    p, z = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    expected = (2 - 2 * F.cosine_similarity(p, z, dim=1)).mean()
    assert byol_loss(p, z).item() == pytest.approx(expected.item(), rel=1e-5)
    assert byol_loss(3 * p, 0.1 * z).item() == pytest.approx(expected.item(), rel=1e-5)


def test_target_is_detached():
    g = torch.Generator().manual_seed(1)
    p = torch.randn(4, 3, generator=g, requires_grad=True)
    z = torch.randn(4, 3, generator=g, requires_grad=True)
    byol_loss(p, z).backward()
    assert z.grad is None
    assert p.grad is not None and p.grad.abs().sum() > 0


def test_zero_rows_are_finite_and_bf16_gives_fp32():
    p, z = torch.zeros(2, 3, requires_grad=True), torch.ones(2, 3)
    loss = byol_loss(p, z)
    loss.backward()
    assert loss.item() == pytest.approx(2.0) and torch.isfinite(p.grad).all()
    assert byol_loss(torch.randn(4, 3).bfloat16(), torch.randn(4, 3).bfloat16()).dtype == torch.float32


def test_cosine_momentum_schedule():
    assert cosine_momentum(0.99, 0.0) == pytest.approx(0.99)
    assert cosine_momentum(0.99, 1.0) == pytest.approx(1.0)
    assert cosine_momentum(0.99, 0.5) == pytest.approx(0.995)  # 1 - 0.01 * (cos(pi/2) + 1) / 2
    assert cosine_momentum(0.996, 0.25) == pytest.approx(1 - 0.004 * (math.cos(math.pi / 4) + 1) / 2)
    assert cosine_momentum(0.99, 1.7) == pytest.approx(1.0)  # clamped past the end
    values = [cosine_momentum(0.99, k / 10) for k in range(11)]
    assert values == sorted(values)


def make_byol(momentum=0.99, **options):
    torch.manual_seed(0)
    return BYOL(ViTEncoder("vit_micro", 32, 8),
                BYOLOptions(momentum=momentum, proj_hidden_dim=32, proj_output_dim=16, pred_hidden_dim=24, **options))


def test_structure_and_frozen_target():
    model = make_byol()
    assert [m.out_features for m in model.predictor if isinstance(m, torch.nn.Linear)] == [24, 16]
    assert not any(p.requires_grad for p in model.target_encoder.parameters())
    assert not any(p.requires_grad for p in model.target_projector.parameters())
    for a, b in zip(model.encoder.parameters(), model.target_encoder.parameters()):  # starts as a copy
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()
    defaults = BYOLOptions()
    assert (defaults.momentum, defaults.proj_hidden_dim, defaults.proj_output_dim) == (0.99, 4096, 256)


@pytest.mark.parametrize("bn_views", ["per_view", "joint"])
def test_forward_is_symmetrised_prediction_of_the_target(bn_views):
    model = make_byol(bn_views=bn_views)

    def heads(head, x):  # BatchNorm over each view alone, or over both views as one batch
        return [head(v) for v in x.chunk(2)] if bn_views == "per_view" else head(x).chunk(2)

    with torch.no_grad():  # make the target differ from the online network
        for p in model.target_projector.parameters():
            p.add_(0.1)
    views = [torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)]
    out = model(views)
    assert set(out.losses) == {"byol"}
    z1, z2 = out.features["emb.0"], out.features["emb.1"]
    p1, p2 = heads(model.predictor, torch.cat([z1, z2]))
    with torch.no_grad():
        t1, t2 = heads(model.target_projector, model.target_encoder.forward_masked(torch.cat(views), None).cls)
    expected = byol_loss(p1, t2) + byol_loss(p2, t1)
    assert out.losses["byol"].item() == pytest.approx(expected.item(), rel=1e-5)
    out.losses["byol"].backward()
    assert model.predictor[0].weight.grad.abs().sum() > 0
    assert model.projector[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.target_encoder.parameters())
    assert all(p.grad is None for p in model.target_projector.parameters())


def test_on_step_end_moves_the_target_by_one_minus_tau_and_updates_tau():
    model = make_byol(momentum=0.9)
    with torch.no_grad():
        for p in list(model.encoder.parameters()) + list(model.projector.parameters()):
            p.add_(torch.randn_like(p))
        model.projector[1].running_mean.fill_(0.7)  # an online BN buffer
    online = [p.detach().clone() for p in list(model.encoder.parameters()) + list(model.projector.parameters())]
    before = [p.detach().clone() for p in list(model.target_encoder.parameters()) + list(model.target_projector.parameters())]

    model.on_step_end(0.5)
    after = [p.detach().clone() for p in list(model.target_encoder.parameters()) + list(model.target_projector.parameters())]
    for o, b, a in zip(online, before, after):
        torch.testing.assert_close(a, b + 0.1 * (o - b), rtol=1e-6, atol=1e-7)  # tau was 0.9
    assert not torch.equal(after[0], before[0])
    assert torch.equal(model.target_projector[1].running_mean, model.projector[1].running_mean)  # copied
    assert float(model.tau) == pytest.approx(cosine_momentum(0.9, 0.5)) == pytest.approx(0.95)
    assert model.tau.dtype == torch.float64
    # the next step uses the updated tau
    model.on_step_end(1.0)
    for o, a, a2 in zip(online, after, list(model.target_encoder.parameters()) + list(model.target_projector.parameters())):
        torch.testing.assert_close(a2.detach(), a + 0.05 * (o - a), rtol=1e-6, atol=1e-7)
    assert float(model.tau) == 1.0


def test_tau_is_saved_in_the_state_dict():
    model = make_byol()
    model.on_step_end(0.3)
    state = model.state_dict()
    assert "tau" in state and float(state["tau"]) == pytest.approx(cosine_momentum(0.99, 0.3))
    fresh = make_byol()
    assert float(fresh.tau) == pytest.approx(0.99)
    fresh.load_state_dict(state)
    assert float(fresh.tau) == float(model.tau)
    assert any(k.startswith("target_encoder.") for k in state)


def test_byol_loss_gradcheck_float64_and_target_is_a_constant():
    g = torch.Generator().manual_seed(6)
    p = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    z = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: byol_loss(a, z), (p,))
    byol_loss(p, z).backward()
    assert z.grad is None  # sg(z)
