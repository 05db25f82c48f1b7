import pytest
import torch
import torch.nn.functional as F

from mimreg.methods import MSE
from mimreg.methods.joint import mlp
from mimreg.methods.mse import MSEOptions
from mimreg.models import ViTEncoder
from mimreg.regularizers.mst import Mst, MstOptions

pytestmark = pytest.mark.usefixtures("single_thread")


def make_mse(weight=3.0):
    torch.manual_seed(0)
    return MSE(ViTEncoder("vit_micro", 32, 8), MSEOptions(weight=weight, proj_hidden_dim=32, proj_output_dim=16))


def test_loss_is_weight_times_mse_of_the_projector_outputs():
    model = make_mse(weight=3.0)
    out = model([torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)])
    assert set(out.losses) == {"mse"}
    z1, z2 = out.features["emb.0"], out.features["emb.1"]
    assert z1.shape == (4, 16)
    expected = 3.0 * F.mse_loss(z1, z2)  # mean over N x d
    assert out.losses["mse"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert expected.item() == pytest.approx(3.0 * ((z1 - z2) ** 2).sum().item() / (4 * 16), rel=1e-5)
    assert [m.out_features for m in model.projector if isinstance(m, torch.nn.Linear)] == [32, 32, 16]
    assert MSEOptions().weight == 10.0


def test_identical_views_give_zero():
    model = make_mse()
    x = torch.randn(4, 3, 32, 32)
    out = model([x, x.clone()])
    # zero up to rounding: the two copies sit in other rows of the batch, which other kernels (or
    # threads) may sum in another order; measured against the size of the embeddings
    scale = model.options.weight * out.features["emb.0"].pow(2).mean().item()
    assert scale > 0.1 and out.losses["mse"].item() <= 1e-10 * scale


def train_projector(with_tregs: bool, seed: int, steps: int = 100):
    """The L_MSE objective (weight 10) on a projector fed two noisy views of fixed features, with
    or without the mse+t-regs regularizer (T-REGS per view; gamma 0.2, lambda 8e-4)."""
    torch.manual_seed(seed)
    base = torch.randn(64, 128)
    projector = mlp([128, 64, 64, 32])
    reg = Mst(MstOptions(edge_weight=0.2, sphere_weight=8e-4), weight=1.0)
    opt = torch.optim.Adam(projector.parameters(), lr=1e-2)
    for step in range(steps):
        g = torch.Generator().manual_seed(1000 + step)
        x1 = base + 0.5 * torch.randn(base.shape, generator=g)
        x2 = base + 0.5 * torch.randn(base.shape, generator=g)
        z1, z2 = projector(torch.cat([x1, x2])).chunk(2)
        loss = 10.0 * F.mse_loss(z1, z2)
        if with_tregs:
            loss = loss + reg({"emb.0": z1, "emb.1": z2})
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        z = projector(base)
    return z.std(dim=0).mean().item(), F.normalize(z, dim=1).std(dim=0).mean().item()


@pytest.mark.parametrize("seed", [0, 1])
def test_mse_alone_collapses_and_tregs_prevents_it(seed):
    """In a 30-step ViT run the collapse of L_MSE is not yet visible (see test_joint_training), so the
    collapse is shown on the projector alone, trained for 100 Adam steps (< 1 s)."""
    std_mse, nstd_mse = train_projector(False, seed)
    std_tregs, nstd_tregs = train_projector(True, seed)
    print(f"seed {seed}: mse alone std {std_mse:.4f} (normalised {nstd_mse:.4f}); "
          f"mse+t-regs std {std_tregs:.4f} (normalised {nstd_tregs:.4f})")
    assert std_mse < 0.02 and nstd_mse < 0.03  # all points near one: collapse
    assert std_tregs > 100 * std_mse
    assert nstd_tregs > 0.15  # 1/sqrt(32) = 0.177 for directions spread evenly


def test_invariance_loss_hand_computed_and_gradcheck():
    from mimreg.methods import invariance_loss

    z1, z2 = torch.tensor([[1.0, 2.0], [0.0, 0.0]]), torch.tensor([[0.0, 0.0], [3.0, 0.0]])
    assert invariance_loss(z1, z2).item() == pytest.approx((1 + 4 + 9 + 0) / 4)
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    assert torch.autograd.gradcheck(invariance_loss, (a, b))
    assert invariance_loss(z1.bfloat16(), z2.bfloat16()).dtype == torch.float32
