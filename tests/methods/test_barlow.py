import pytest
import torch

from mimreg.methods import BarlowTwins, barlow_loss
from mimreg.methods.barlow import BarlowOptions
from mimreg.models import ViTEncoder

from support import assert_close_at_scale

pytestmark = pytest.mark.usefixtures("single_thread")


def reference_barlow(z1, z2, lambd=0.0051, eps=1e-5):
    """Eq. 1 with explicit sums over i, j, in the input dtype (float64 here)."""
    n, d = z1.shape
    a = (z1 - z1.mean(0)) / torch.sqrt(z1.var(0, unbiased=False) + eps)
    b = (z2 - z2.mean(0)) / torch.sqrt(z2.var(0, unbiased=False) + eps)
    total = z1.new_zeros(())
    for i in range(d):
        for j in range(d):
            c = (a[:, i] * b[:, j]).sum() / n
            total = total + ((1 - c) ** 2 if i == j else lambd * c ** 2)
    return total


def test_identical_decorrelated_views_give_zero():
    # columns of +-1 with zero mean, unit (biased) variance and orthogonal: c = identity
    z = torch.tensor([[1.0, 1.0, 1.0], [1.0, -1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, -1.0, 1.0]])
    assert barlow_loss(z, z).item() < 1e-8
    assert barlow_loss(5 * z + 2, z).item() < 1e-8  # each view is standardised first


def test_hand_computed_two_dims():
    # standardised: z1 -> [[1, 1], [-1, -1]], z2 -> [[1, -1], [-1, 1]]
    z1 = torch.tensor([[1.0, 3.0], [-1.0, -3.0]])
    z2 = torch.tensor([[2.0, -5.0], [0.0, 5.0]])
    # c = z1n^T z2n / 2 = [[1, -1], [1, -1]]: on-diagonal (1-1)^2 + (1+1)^2 = 4, off-diagonal 1 + 1 = 2
    assert barlow_loss(z1, z2, lambd=0.0).item() == pytest.approx(4.0, rel=1e-4)
    assert barlow_loss(z1, z2, lambd=0.5).item() == pytest.approx(4.0 + 0.5 * 2.0, rel=1e-4)
    assert barlow_loss(z1, z2).item() == pytest.approx(4.0 + 0.0051 * 2.0, rel=1e-4)


def test_matches_explicit_sums():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(7, 4, generator=g), torch.randn(7, 4, generator=g)
    got = barlow_loss(z1, z2, lambd=0.1).item()
    assert got == pytest.approx(reference_barlow(z1.double(), z2.double(), 0.1).item(), rel=1e-5)


def test_lambda_scales_only_the_off_diagonal_part():
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(9, 5, generator=g), torch.randn(9, 5, generator=g)
    on = barlow_loss(z1, z2, lambd=0.0).item()
    one = barlow_loss(z1, z2, lambd=1.0).item() - on  # the off-diagonal sum of squares
    assert one > 0
    for lambd in (0.0051, 0.3, 2.0):
        assert barlow_loss(z1, z2, lambd=lambd).item() == pytest.approx(on + lambd * one, rel=1e-5)
    # the on-diagonal part alone: sum (1 - c_ii)^2
    a = (z1 - z1.mean(0)) / torch.sqrt(z1.var(0, unbiased=False) + 1e-5)
    b = (z2 - z2.mean(0)) / torch.sqrt(z2.var(0, unbiased=False) + 1e-5)
    assert on == pytest.approx(((1 - (a * b).sum(0) / 9) ** 2).sum().item(), rel=1e-5)


def test_gradient_matches_float64_reference():
    g = torch.Generator().manual_seed(2)
    z1, z2 = torch.randn(6, 3, generator=g, dtype=torch.float64), torch.randn(6, 3, generator=g, dtype=torch.float64)
    a = [z1.float().requires_grad_(True), z2.float().requires_grad_(True)]
    barlow_loss(*a, lambd=0.2).backward()
    b = [z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)]
    reference_barlow(*b, lambd=0.2).backward()
    scale = max(y.grad.abs().max().item() for y in b)  # fp32 rounding is relative to the whole gradient
    for x, y in zip(a, b):
        assert_close_at_scale(x.grad.double(), y.grad, 1e-5, scale)


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(3)
    z1 = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: barlow_loss(a, b, 0.1), (z1, z2))


def test_bf16_inputs_give_fp32_loss():
    g = torch.Generator().manual_seed(4)
    z1, z2 = torch.randn(8, 4, generator=g).bfloat16(), torch.randn(8, 4, generator=g).bfloat16()
    assert barlow_loss(z1, z2).dtype == torch.float32


def test_loss_stays_fp32_under_autocast():
    g = torch.Generator().manual_seed(5)
    z1, z2 = torch.randn(16, 8, generator=g), torch.randn(16, 8, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = barlow_loss(z1, z2)
    assert loss.dtype == torch.float32


def test_method_loss_is_barlow_of_the_projector_outputs():
    torch.manual_seed(0)
    model = BarlowTwins(ViTEncoder("vit_micro", 32, 8), BarlowOptions(lambd=0.02, proj_hidden_dim=32, proj_output_dim=16))
    assert [m.out_features for m in model.projector if isinstance(m, torch.nn.Linear)] == [32, 32, 16]
    out = model([torch.randn(6, 3, 32, 32), torch.randn(6, 3, 32, 32)])
    assert set(out.losses) == {"barlow"}
    expected = barlow_loss(out.features["emb.0"], out.features["emb.1"], 0.02)
    assert out.losses["barlow"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert BarlowOptions().lambd == 0.0051
