import math

import pytest
import torch

from mimreg.errors import ConfigError
from mimreg.regularizers import magma_loss, rbf_affinity
from mimreg.regularizers.magma import Magma, MagmaOptions


def reference_magma(x, y, degree_eps=1e-4):
    """Literal transcription of spec §1.2 with a (B, B, D) broadcast, in float64."""
    x, y = x.double(), y.double()
    sq = ((x[:, None] - x[None]) ** 2).sum(-1)
    gamma = sq[sq != 0].std()
    w = torch.exp(-sq / gamma)
    w = w * (1 - torch.eye(len(x), dtype=w.dtype))
    d = torch.diag(1 / torch.sqrt(w.sum(1) + degree_eps))
    lap = torch.eye(len(x), dtype=w.dtype) - d @ w @ d
    return torch.trace(y.T @ lap @ y) / len(x) ** 2


def test_three_points_hand_computed():
    # reference points 0, 1, 3 on a line: squared distances 1, 9, 4 (each twice)
    x = torch.tensor([[0.0], [1.0], [3.0]])
    y = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    d = torch.tensor([1.0, 9.0, 4.0])
    gamma = torch.cat([d, d]).std()  # unbiased over the 6 off-diagonal entries
    w01, w02, w12 = torch.exp(-d / gamma)
    deg = torch.tensor([w01 + w02, w01 + w12, w02 + w12]) + 1e-4
    yy = y @ y.T
    cross = 2 * (w01 * yy[0, 1] / (deg[0] * deg[1]).sqrt() + w02 * yy[0, 2] / (deg[0] * deg[2]).sqrt()
                 + w12 * yy[1, 2] / (deg[1] * deg[2]).sqrt())
    expected = (yy.trace() - cross) / 9
    assert magma_loss(x, y).item() == pytest.approx(expected.item(), rel=1e-5)


def test_matches_literal_transcription():
    x, y = torch.randn(12, 6), torch.randn(12, 5)
    assert magma_loss(x, y).item() == pytest.approx(reference_magma(x, y).item(), rel=1e-5)


def test_kernel_is_exp_minus_d_over_std():
    x = torch.tensor([[0.0], [2.0]])
    # one pair at squared distance 4, both triangles -> std of (4, 4) is 0 -> guarded
    w = rbf_affinity(x)
    assert torch.isfinite(w).all() and w[0, 0] == 0
    x = torch.tensor([[0.0], [1.0], [2.0]])
    d = torch.tensor([1.0, 4.0, 1.0])
    gamma = torch.cat([d, d]).std()
    assert rbf_affinity(x)[0, 2].item() == pytest.approx(math.exp(-4 / gamma.item()), rel=1e-6)


def test_gradcheck_float64_through_both_inputs():
    x = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    y = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(magma_loss, (x, y))


def test_nothing_detached():
    x = torch.randn(8, 4, requires_grad=True)
    y = torch.randn(8, 4, requires_grad=True)
    magma_loss(x, y).backward()
    assert x.grad.abs().sum() > 0 and y.grad.abs().sum() > 0


@pytest.mark.parametrize("case", ["all_equal", "duplicates", "two_points", "zero_variance_y"])
def test_degenerate_batches_are_finite(case):
    if case == "all_equal":
        x, y = torch.ones(5, 3), torch.randn(5, 3)
    elif case == "duplicates":
        x = torch.randn(5, 3)
        x[1] = x[0]
        x[3] = x[2]
        y = torch.randn(5, 3)
    elif case == "two_points":
        x, y = torch.randn(2, 3), torch.randn(2, 3)
    else:
        x, y = torch.randn(5, 3), torch.zeros(5, 3)
    x.requires_grad_(True)
    y.requires_grad_(True)
    loss = magma_loss(x, y)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(x.grad).all() and torch.isfinite(y.grad).all()


def test_batch_of_one_is_a_clear_error():
    with pytest.raises(ValueError, match="B >= 2"):
        magma_loss(torch.randn(1, 3), torch.randn(1, 3))


def test_fp32_inside_under_low_precision_inputs():
    x = (torch.randn(16, 8) * 300).half()  # squared distances overflow fp16
    y = torch.randn(16, 8).bfloat16()
    out = magma_loss(x, y)
    assert out.dtype == torch.float32 and torch.isfinite(out)


def test_loss_lowers_when_regularized_layer_follows_graph():
    # two clusters in the reference layer; Y smooth on the graph has lower loss than Y that cuts it
    x = torch.cat([torch.zeros(4, 2), torch.full((4, 2), 5.0)]) + 0.01 * torch.randn(8, 2)
    smooth = torch.cat([torch.ones(4, 1), -torch.ones(4, 1)])
    rough = torch.tensor([[1.0], [-1.0]] * 4)
    assert magma_loss(x, smooth) < magma_loss(x, rough)


def test_module_resolves_blocks_and_window():
    reg = Magma(MagmaOptions(), weight=None, start_epoch=1, duration=2, depth=6)
    assert reg.reads() == ("block.5", "block.4")
    assert [reg.weight_at(e) for e in range(4)] == [0, 1.0, 1.0, 0]
    feats = {"block.5": torch.randn(8, 4), "block.4": torch.randn(8, 4)}
    assert reg(feats).item() == pytest.approx(magma_loss(feats["block.4"], feats["block.5"]).item())
    with pytest.raises(ConfigError, match="out of range"):
        Magma(MagmaOptions(reference_blocks=[-9]), depth=6)
    with pytest.raises(ConfigError, match="differ"):
        Magma(MagmaOptions(reference_blocks=[5]), depth=6)
