import math

import pytest
import torch

from mimreg.regularizers import uniformity_loss
from mimreg.regularizers.uniformity import Uniformity, UniformityOptions


def test_orthogonal_points_hand_computed():
    # S = I (3x3): mean of squared entries = 3 / 9
    z = torch.tensor([[2.0, 0, 0], [0, 3.0, 0], [0, 0, 0.5]])
    assert uniformity_loss(z).item() == pytest.approx(1 / 3)


def test_small_case_hand_computed():
    # unit vectors at 0 and 60 degrees plus a duplicate of the first:
    # cosines: 1 (x5 incl. diagonal and duplicate pairs), 0.5 (x4) -> (5*1 + 4*0.25) / 9
    z = torch.tensor([[1.0, 0.0], [0.5, math.sqrt(3) / 2], [4.0, 0.0]])
    assert uniformity_loss(z).item() == pytest.approx((5 + 4 * 0.25) / 9)


def test_scale_invariant_and_fp32_from_bf16():
    z = torch.randn(16, 8)
    ref = uniformity_loss(z)
    assert uniformity_loss(7.5 * z).item() == pytest.approx(ref.item(), rel=1e-5)
    out = uniformity_loss(z.bfloat16())
    assert out.dtype == torch.float32


def test_gradcheck_float64():
    z = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(uniformity_loss, (z,))


def test_degenerate_inputs_are_finite():
    zero = torch.zeros(4, 3, requires_grad=True)
    loss = uniformity_loss(zero)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(zero.grad).all()
    dup = torch.ones(4, 3, requires_grad=True)  # all identical: every cosine is 1
    assert uniformity_loss(dup).item() == pytest.approx(1.0)
    assert uniformity_loss(torch.randn(1, 3)).item() == pytest.approx(1.0)  # batch of 1: only the diagonal


def test_gradient_spreads_points():
    z = torch.randn(32, 8) * 0.1 + torch.tensor([1.0] + [0.0] * 7)
    z.requires_grad_(True)
    opt = torch.optim.SGD([z], lr=1.0)
    start = uniformity_loss(z).item()
    for _ in range(50):
        opt.zero_grad()
        uniformity_loss(z).backward()
        opt.step()
    assert uniformity_loss(z).item() < 0.5 * start


def test_module_window_and_batch_check():
    reg = Uniformity(UniformityOptions(), weight=None, start_epoch=2, duration=3)
    assert reg.weight == 0.01  # U-MAE default
    assert [reg.weight_at(e) for e in range(6)] == [0, 0, 0.01, 0.01, 0.01, 0]
    assert reg.reads() == ("cls",)
    with pytest.raises(Exception, match="at least 2"):
        reg({"cls": torch.randn(1, 4)})
