import copy
import math

import pytest
import torch
from torch import nn

from mimreg.engine.trainee import Trainee
from mimreg.errors import ConfigError
from mimreg.methods.base import MethodOutput
from mimreg.regularizers import REGULARIZERS, club_nll, club_sample_bound
from mimreg.regularizers.club import Club, ClubOptions, GaussianPosterior

from support import assert_same_gradients


def test_bound_and_nll_hand_computed():
    mu = torch.tensor([[0.0, 1.0], [2.0, 0.0]])
    var = torch.tensor([[1.0, 2.0], [0.5, 1.0]])
    z = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    perm = torch.tensor([1, 0])
    # row 0: positive -1/2 - 0/4 = -0.5; negative (z[1]) -0/2 - 1/4 = -0.25 -> -0.25
    # row 1: positive -4/1 - 0/2 = -4; negative (z[0]) -1/1 - 1/2 = -1.5 -> -2.5
    assert club_sample_bound(mu, var, z, perm).item() == pytest.approx((-0.25 - 2.5) / 2)
    # row 0: 1/1 + log 1 + 0/2 + log 2; row 1: 4/0.5 + log 0.5 + 0/1 + log 1
    assert club_nll(mu, var, z).item() == pytest.approx((1 + math.log(2) + 8 - math.log(2)) / 2)
    assert club_sample_bound(mu, var, z, torch.tensor([0, 1])).item() == 0.0  # identity: no information


def test_pure_functions_check_shapes_and_stay_fp32():
    mu, var, z = torch.randn(4, 3).half(), torch.rand(4, 3).bfloat16(), torch.randn(4, 3).half()
    assert club_sample_bound(mu, var, z, torch.randperm(4)).dtype == torch.float32
    assert club_nll(mu, var, z).dtype == torch.float32
    with pytest.raises(ValueError, match="same"):
        club_nll(torch.randn(4, 3), torch.rand(4, 2), torch.randn(4, 3))
    with pytest.raises(ValueError, match="permutation"):
        club_sample_bound(torch.randn(4, 3), torch.rand(4, 3), torch.randn(4, 3), torch.arange(3))


@pytest.mark.parametrize("case", ["zero_variance", "duplicates"])
def test_degenerate_inputs_are_finite(case):
    mu, var, z = torch.randn(6, 3), torch.rand(6, 3) + 0.1, torch.randn(6, 3)
    if case == "zero_variance":
        var = torch.zeros(6, 3)
    else:
        z[1] = z[0]
        mu[1] = mu[0]
    for t in (mu, var, z):
        t.requires_grad_(True)
    total = club_sample_bound(mu, var, z, torch.randperm(6)) + club_nll(mu, var, z)
    total.backward()
    assert torch.isfinite(total)
    assert all(torch.isfinite(t.grad).all() for t in (mu, var, z))
    reg = Club(ClubOptions(), embed_dim=3)
    same = torch.ones(2, 4, 3)  # every token identical
    feats = {"patch_embed": same, "tokens": same}
    assert torch.isfinite(reg(feats)) and torch.isfinite(reg.auxiliary_loss(feats))


def test_posterior_architecture_and_variance_modes():
    q = GaussianPosterior(4, 6)
    kinds = [type(m) for m in q.mean]
    assert kinds == [nn.Linear, nn.GELU, nn.Linear, nn.Linear, nn.LeakyReLU]
    assert [type(m) for m in q.var][-1] is nn.ReLU and q.var[0].in_features == 4 and q.var[3].out_features == 4
    mu, var = q(torch.randn(10, 4).bfloat16().float())
    assert mu.shape == var.shape == (10, 4) and (var >= 1e-4).all()
    with torch.no_grad():
        q.var[3].bias.fill_(-100.0)  # ReLU dead everywhere -> variance is exactly var_eps
    assert torch.allclose(q(torch.randn(3, 4))[1], torch.full((3, 4), 1e-4))
    logq = GaussianPosterior(4, 6, mode="log_variance")
    assert (logq(torch.randn(10, 4))[1] >= 1).all()


def make_features(b=3, n=5, d=4, requires_grad=True):
    x = torch.randn(b, n, d, requires_grad=requires_grad)
    z = (torch.tanh(x) + 0.1 * torch.randn(b, n, d)).detach().requires_grad_(requires_grad)
    return x, z


def test_gradient_routing():
    weight = 3.0
    reg = Club(ClubOptions(hidden_dim=8), weight=weight, embed_dim=4)
    x, z = make_features()
    feats = {"patch_embed": x, "tokens": z}
    torch.manual_seed(7)
    (weight * reg(feats) + reg.auxiliary_loss(feats)).backward()
    q_grads = {name: p.grad.clone() for name, p in reg.q.named_parameters()}

    # q's gradients are those of its NLL alone, on detached inputs
    reg.zero_grad()
    mu, var = reg.q(x.detach().reshape(-1, 4))
    club_nll(mu, var, z.detach().reshape(-1, 4)).backward()
    assert_same_gradients(q_grads, {name: p.grad for name, p in reg.q.named_parameters()})

    # x and z get weight * d(bound)/d(x, z) through a frozen copy of q, and nothing from the NLL
    frozen = copy.deepcopy(reg.q).requires_grad_(False)
    x2, z2 = x.detach().clone().requires_grad_(True), z.detach().clone().requires_grad_(True)
    torch.manual_seed(7)
    mu, var = frozen(x2.reshape(-1, 4))
    bound = club_sample_bound(mu, var, z2.reshape(-1, 4), torch.randperm(15))
    (weight * bound).backward()
    assert_same_gradients({"x": x.grad, "z": z.grad}, {"x": x2.grad, "z": z2.grad})
    assert x.grad.abs().sum() > 0 and z.grad.abs().sum() > 0

    # the bound alone leaves q untouched; the NLL alone leaves x and z untouched
    reg.zero_grad()
    x.grad = z.grad = None
    reg(feats).backward()
    assert all(p.grad is None for p in reg.q.parameters())
    reg.auxiliary_loss(feats).backward()
    assert x.grad.abs().sum() > 0  # from the bound above
    before = x.grad.clone()
    reg.auxiliary_loss(feats).backward()
    assert torch.equal(x.grad, before)


def q_trained_on(x, z, steps=150):
    torch.manual_seed(0)
    reg = Club(ClubOptions(hidden_dim=32), embed_dim=x.shape[1])
    opt = torch.optim.Adam(reg.q.parameters(), lr=1e-2)
    feats = {"patch_embed": x, "tokens": z}
    first = None
    for _ in range(steps):
        nll = reg.auxiliary_loss(feats)
        first = nll.item() if first is None else first
        opt.zero_grad()
        nll.backward()
        opt.step()
    with torch.no_grad():
        estimate = torch.stack([reg(feats) for _ in range(10)]).mean().item()
    return first, reg.auxiliary_loss(feats).item(), estimate


def test_training_q_lowers_nll_and_bound_tracks_dependence():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 4, generator=g)
    a = torch.randn(4, 4, generator=g)
    dependent = x @ a + 0.1 * torch.randn(512, 4, generator=g) + 3.0  # mostly positive: LeakyReLU mean
    independent = torch.randn(512, 4, generator=g) @ a + 3.0
    first, last, dep_estimate = q_trained_on(x, dependent)
    assert last < first - 1.0
    _, _, indep_estimate = q_trained_on(x, independent)
    assert dep_estimate > 0 and dep_estimate > indep_estimate + 1.0


def test_module_options_registration_and_errors():
    assert REGULARIZERS["club"] is Club
    reg = Club(ClubOptions(), embed_dim=4)
    assert reg.reads() == ("patch_embed", "tokens") and reg.weight == 10.0 and not reg.batch_wide
    assert reg.q.mean[0].out_features == 4  # hidden width defaults to the encoder width
    with pytest.raises(ConfigError, match="embed_dim"):
        Club(ClubOptions())
    with pytest.raises(ConfigError, match="variance"):
        Club(ClubOptions(variance="log"), embed_dim=4)
    with pytest.raises(ConfigError, match="same shape"):
        reg({"patch_embed": torch.randn(2, 3, 4), "tokens": torch.randn(2, 2, 4)})
    with pytest.raises(ConfigError, match="at least 2 tokens"):
        reg({"patch_embed": torch.randn(1, 1, 4), "tokens": torch.randn(1, 1, 4)})


class StubMethod(nn.Module):
    """Just enough of a Method for the Trainee: one linear 'encoder' from x to z."""

    def __init__(self, d=4):
        super().__init__()
        self.encoder = nn.Linear(d, d)
        self.encoder.embed_dim = d

    def forward(self, images, *, needs=frozenset()):
        z = self.encoder(images)
        return MethodOutput(losses={"rec": z.pow(2).mean()}, features={"patch_embed": images, "tokens": z})


def test_trainee_adds_the_nll_unweighted_from_the_first_step_and_the_bound_only_while_active():
    torch.manual_seed(0)
    reg = Club(ClubOptions(hidden_dim=8), weight=5.0, start_epoch=1, embed_dim=4)
    trainee = Trainee(StubMethod(), [reg], [])
    images = torch.randn(2, 6, 4)

    torch.manual_seed(1)
    active = trainee(images, epoch=1)
    torch.manual_seed(1)
    out = trainee.method(images)
    bound, nll = reg(out.features), reg.auxiliary_loss(out.features)
    assert active.total.item() == pytest.approx((out.losses["rec"] + 5.0 * bound + nll).item(), rel=1e-6)
    assert active.terms["aux/club"].item() == pytest.approx(nll.item(), rel=1e-6)
    active.total.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in reg.q.parameters())

    trainee.zero_grad()
    idle = trainee(images, epoch=0, monitor=True)  # before its window: bound monitored, q already fitted
    assert {"aux/club", "monitor/club"} <= set(idle.terms) and "reg/club" not in idle.terms
    assert idle.total.item() == pytest.approx((out.losses["rec"] + nll).item(), rel=1e-6)
    idle.total.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in reg.q.parameters())
    encoder_grads = {n: p.grad.clone() for n, p in trainee.method.named_parameters()}
    trainee.zero_grad()
    trainee.method(images).losses["rec"].backward()  # the encoder gets the gradient of rec alone
    assert_same_gradients(encoder_grads, {n: p.grad for n, p in trainee.method.named_parameters()})

    trainee.eval()  # evaluation trains nothing
    assert "aux/club" not in trainee(images, epoch=0).terms


def test_club_bound_and_nll_gradcheck_float64():
    g = torch.Generator().manual_seed(9)
    mu = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    var = (torch.rand(4, 3, generator=g, dtype=torch.float64) + 0.5).requires_grad_(True)
    z = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    perm = torch.tensor([2, 0, 3, 1])
    assert torch.autograd.gradcheck(lambda m, v, x: club_sample_bound(m, v, x, perm), (mu, var, z))
    assert torch.autograd.gradcheck(club_nll, (mu, var, z))
