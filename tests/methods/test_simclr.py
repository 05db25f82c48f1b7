import math

import pytest
import torch
import torch.nn.functional as F

from mimreg.methods import SimCLR, nt_xent_loss
from mimreg.methods.simclr import SimCLROptions
from mimreg.models import ViTEncoder

from support import assert_close_at_scale

pytestmark = pytest.mark.usefixtures("single_thread")


def naive_nt_xent(z1, z2, temperature):
    """SimCLR Eq. 1 anchor by anchor in float64: -log(exp(s_pos) / sum_{k != i} exp(s_ik))."""
    z = torch.cat([z1, z2]).double()
    n2 = len(z)
    n = n2 // 2
    losses = []
    for i in range(n2):
        s = [float(F.cosine_similarity(z[i], z[k], dim=0)) / temperature for k in range(n2)]
        positive = (i + n) % n2
        denominator = sum(math.exp(s[k]) for k in range(n2) if k != i)
        losses.append(-math.log(math.exp(s[positive]) / denominator))
    return sum(losses) / n2


def test_hand_computed_two_pairs():
    # rows after normalisation: a0 = (1, 0), a1 = (0, 1), b0 = (3, 4)/5 = (.6, .8), b1 = (-1, 0)
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z2 = torch.tensor([[3.0, 4.0], [-2.0, 0.0]])
    # cosines / tau with tau = 0.5; the diagonal is excluded (-inf), order a0, a1, b0, b1
    inf = float("-inf")
    logits = [[inf, 0.0, 1.2, -2.0],
              [0.0, inf, 1.6, 0.0],
              [1.2, 1.6, inf, -1.2],
              [-2.0, 0.0, -1.2, inf]]
    positives = [2, 3, 0, 1]
    expected = 0.0
    for row, pos in zip(logits, positives):
        expected += -row[pos] + math.log(sum(math.exp(v) for v in row if v != inf))
    expected /= 4
    assert nt_xent_loss(z1, z2, temperature=0.5).item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(naive_nt_xent(z1, z2, 0.5), rel=1e-12)  # the table is right


@pytest.mark.parametrize("temperature", [0.07, 0.2, 0.5, 1.0])
def test_matches_naive_per_anchor_loop(temperature):
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    got = nt_xent_loss(z1, z2, temperature).item()
    assert got == pytest.approx(naive_nt_xent(z1, z2, temperature), rel=1e-5)


def test_temperature_effect():
    g = torch.Generator().manual_seed(1)
    z1 = torch.randn(6, 8, generator=g)
    z2 = z1 + 0.05 * torch.randn(6, 8, generator=g)  # positives are each anchor's nearest row
    losses = [nt_xent_loss(z1, z2, t).item() for t in (0.05, 0.1, 0.2, 0.5, 1.0)]
    assert losses == sorted(losses) and losses[0] < 0.05 < losses[-1]  # sharper -> lower when aligned
    # very high temperature: all 2N - 1 candidates equally likely
    assert nt_xent_loss(z1, z2, 1e6).item() == pytest.approx(math.log(11), rel=1e-4)
    # the default is 0.2
    assert nt_xent_loss(z1, z2).item() == pytest.approx(losses[2], rel=1e-6)


def test_invariant_to_row_scale_and_symmetric_in_views():
    g = torch.Generator().manual_seed(2)
    z1, z2 = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)
    scale = torch.rand(4, 1, generator=g) * 10 + 0.1
    base = nt_xent_loss(z1, z2).item()
    assert nt_xent_loss(z1 * scale, z2).item() == pytest.approx(base, rel=1e-5)
    assert nt_xent_loss(z2, z1).item() == pytest.approx(base, rel=1e-5)


def fp32_reference_gradient_check(fn, reference, *shapes, seed=0, tol=1e-5):
    g = torch.Generator().manual_seed(seed)
    inputs = [torch.randn(*s, generator=g, dtype=torch.float64) for s in shapes]
    got_in = [x.float().requires_grad_(True) for x in inputs]
    fn(*got_in).backward()
    ref_in = [x.clone().requires_grad_(True) for x in inputs]
    reference(*ref_in).backward()
    scale = max(b.grad.abs().max().item() for b in ref_in)  # fp32 rounding is relative to the whole gradient
    for a, b in zip(got_in, ref_in):
        assert_close_at_scale(a.grad.double(), b.grad, tol, scale)


def test_gradient_matches_float64_reference():
    def reference(z1, z2, t=0.3):
        z = F.normalize(torch.cat([z1, z2]), dim=1)
        s = z @ z.T / t
        n = len(z1)
        s = s.masked_fill(torch.eye(2 * n, dtype=torch.bool), float("-inf"))
        pos = torch.cat([torch.diagonal(s, n), torch.diagonal(s, -n)])
        return (torch.logsumexp(s, 1) - pos).mean()

    fp32_reference_gradient_check(lambda a, b: nt_xent_loss(a, b, 0.3), reference, (6, 4), (6, 4))


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(3)
    z1 = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: nt_xent_loss(a, b, 0.5), (z1, z2))


@pytest.mark.parametrize("case", ["zero_rows", "identical_views", "duplicate_images"])
def test_degenerate_inputs_are_finite(case):
    g = torch.Generator().manual_seed(4)
    z1, z2 = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    if case == "zero_rows":
        z1[1] = 0
        z2[3] = 0
    elif case == "identical_views":
        z2 = z1.clone()
    else:
        z1[1], z2[1] = z1[0], z2[0]
    z1.requires_grad_(True)
    z2.requires_grad_(True)
    loss = nt_xent_loss(z1, z2)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z1.grad).all() and torch.isfinite(z2.grad).all()
    if case == "zero_rows":  # a zero row has cosine 0 with everything: its row of logits is all 0
        assert z1.grad.abs().sum() > 0


def test_bf16_inputs_give_fp32_loss():
    g = torch.Generator().manual_seed(5)
    z1, z2 = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g)
    got = nt_xent_loss(z1.bfloat16(), z2.bfloat16())
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(nt_xent_loss(z1.bfloat16().float(), z2.bfloat16().float()).item(), rel=1e-6)


def make_simclr(**options):
    torch.manual_seed(0)
    return SimCLR(ViTEncoder("vit_micro", 32, 8), SimCLROptions(proj_hidden_dim=32, proj_output_dim=16, **options))


def test_method_loss_is_nt_xent_of_the_projector_outputs():
    model = make_simclr(temperature=0.3)
    views = [torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)]
    out = model(views)
    assert set(out.losses) == {"nt_xent"}
    expected = nt_xent_loss(out.features["emb.0"], out.features["emb.1"], 0.3)
    assert out.losses["nt_xent"].item() == pytest.approx(expected.item(), rel=1e-6)
    out.losses["nt_xent"].backward()
    assert model.encoder.vit.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert model.projector[0].weight.grad.abs().sum() > 0
