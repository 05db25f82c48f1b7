import math

import pytest
import torch

import mimreg.regularizers.infonce_masks as infonce_module
from mimreg.errors import ConfigError
from mimreg.regularizers import REGULARIZERS, mask_infonce_loss
from mimreg.regularizers.infonce_masks import (InfoNCEMasks, InfoNCEMasksOptions, image_major_to_view_major,
                                               view_major_to_image_major)

from support import assert_close_at_scale


def naive_infonce(latents, num_views, temperature):
    """Spec §5.2(a) term by term with Python loops, in float64."""
    u = torch.nn.functional.normalize(latents.double(), dim=1)
    rows = len(u)
    n = rows // num_views
    terms = []
    for i in range(n):
        for k in range(num_views):
            a = k * n + i
            denom = sum(math.exp(float(u[a] @ u[c]) / temperature) for c in range(rows) if c != a)
            for k2 in range(num_views):
                if k2 != k:
                    b = k2 * n + i
                    terms.append(-math.log(math.exp(float(u[a] @ u[b]) / temperature) / denom))
    return sum(terms) / len(terms)


def test_two_images_two_views_hand_computed():
    # rows (view-major): 0 = img0/v0, 1 = img1/v0, 2 = img0/v1, 3 = img1/v1
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])
    t, c = 0.5, 1 / math.sqrt(2)
    # cosines: 01 = 0, 02 = c, 03 = -1, 12 = c, 13 = 0, 23 = -c; positives (0,2), (1,3)
    e = lambda s: math.exp(s / t)  # noqa: E731
    terms = [
        -(c / t - math.log(e(0) + e(c) + e(-1))),  # anchor 0, positive 2
        -(0 / t - math.log(e(0) + e(c) + e(0))),  # anchor 1, positive 3
        -(c / t - math.log(e(c) + e(c) + e(-c))),  # anchor 2, positive 0
        -(0 / t - math.log(e(-1) + e(0) + e(-c))),  # anchor 3, positive 1
    ]
    assert mask_infonce_loss(z, num_views=2, temperature=t).item() == pytest.approx(sum(terms) / 4, rel=1e-6)


@pytest.mark.parametrize("n,k", [(3, 2), (4, 4), (1, 3), (5, 3)])
def test_matches_naive_loop(n, k):
    z = torch.randn(n * k, 6)
    assert mask_infonce_loss(z, k, 0.2).item() == pytest.approx(naive_infonce(z, k, 0.2), rel=1e-5)


def test_invariant_to_scaling_each_latent():
    z = torch.randn(12, 5)
    scales = torch.rand(12, 1) * 10 + 0.1
    assert mask_infonce_loss(z * scales, 3).item() == pytest.approx(mask_infonce_loss(z, 3).item(), rel=1e-5)


def test_gradcheck_float64():
    z = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: mask_infonce_loss(x, 2, 0.3), (z,))


def test_aligned_views_of_orthogonal_images_score_low():
    n, k, t = 8, 4, 0.1
    aligned = torch.eye(n).repeat(k, 1)  # every view of image i is e_i
    # each anchor: K-1 positives at cos 1, (N-1)K negatives at cos 0
    expected = -math.log(math.exp(1 / t) / ((k - 1) * math.exp(1 / t) + (n - 1) * k))
    low = mask_infonce_loss(aligned, k, t)
    assert low.item() == pytest.approx(expected, rel=1e-5)
    assert low < mask_infonce_loss(torch.randn(n * k, n), k, t) - 1.0


@pytest.mark.parametrize("case", ["duplicates", "zeros", "all_equal"])
def test_degenerate_inputs_are_finite(case):
    z = torch.randn(8, 4)
    if case == "duplicates":
        z[1] = z[0]
        z[5] = z[0]
    elif case == "zeros":
        z[2] = 0
        z[6] = 0
    else:
        z = torch.ones(8, 4)
    z.requires_grad_(True)
    loss = mask_infonce_loss(z, 2)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()


def test_fp32_inside_under_low_precision_inputs():
    out = mask_infonce_loss(torch.randn(8, 4).bfloat16(), 2)
    assert out.dtype == torch.float32 and torch.isfinite(out)


def test_bad_shapes_are_clear_errors():
    with pytest.raises(ValueError, match="K >= 2"):
        mask_infonce_loss(torch.randn(4, 3), 1)
    with pytest.raises(ValueError, match="divisible"):
        mask_infonce_loss(torch.randn(7, 3), 2)
    with pytest.raises(ValueError, match="divisible"):
        mask_infonce_loss(torch.randn(8), 2)
    with pytest.raises(ValueError, match="temperature"):
        mask_infonce_loss(torch.randn(4, 3), 2, 0.0)


def test_reorderings_are_inverse_and_keep_images_together():
    k, n = 3, 4
    z = torch.arange(k * n, dtype=torch.float32)[:, None]  # row r = view r // n of image r % n
    image_major = view_major_to_image_major(z, k)
    assert image_major[:, 0].tolist() == [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]
    assert torch.equal(image_major_to_view_major(image_major, k), z)


def test_module_defaults_registration_and_single_process():
    reg = InfoNCEMasks(InfoNCEMasksOptions())
    assert REGULARIZERS["infonce_masks"] is InfoNCEMasks
    assert reg.reads() == ("cls",) and reg.weight == 1.0 and reg.options.num_views == 4
    z = torch.randn(4 * 3, 8)
    for gather in (True, False):  # gather is a no-op in one process, the reordering an identity
        reg = InfoNCEMasks(InfoNCEMasksOptions(temperature=0.2), gather=gather)
        assert reg({"cls": z}).item() == pytest.approx(mask_infonce_loss(z, 4, 0.2).item(), rel=1e-6)


def test_module_gathers_whole_images_across_processes(monkeypatch):
    """Simulate rank 0 of 2: the fake gather appends what rank 1 would send (its own image-major rows)."""
    k, d = 3, 5
    n0, n1 = 2, 3
    views = torch.randn(k, n0 + n1, d, dtype=torch.float64)  # the global batch: view k of image i; float64: exactness
    global_view_major = views.reshape(k * (n0 + n1), d)
    local0 = views[:, :n0].reshape(k * n0, d).clone().requires_grad_(True)
    local1 = views[:, n0:].reshape(k * n1, d)
    sent_by_rank1 = view_major_to_image_major(local1, k)
    monkeypatch.setattr(infonce_module, "gather_with_grad", lambda x: torch.cat([x, sent_by_rank1]))
    reg = InfoNCEMasks(InfoNCEMasksOptions(num_views=k))
    loss = reg({"cls": local0})
    expected_input = global_view_major.clone().requires_grad_(True)
    expected = mask_infonce_loss(expected_input, k)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-9)
    # a plain concatenation of the view-major blocks would pair the wrong rows
    naive = mask_infonce_loss(torch.cat([local0.detach(), local1]), k)
    assert naive.item() != pytest.approx(expected.item(), rel=1e-3)
    # gradient reaches rank 0's rows exactly as in the one-process loss
    loss.backward()
    expected.backward()
    grad_rank0_rows = expected_input.grad.reshape(k, n0 + n1, d)[:, :n0].reshape(k * n0, d)
    assert_close_at_scale(local0.grad, grad_rank0_rows, 1e-9, expected_input.grad.abs().max().item())


def test_module_errors():
    with pytest.raises(ConfigError, match="num_views"):
        InfoNCEMasks(InfoNCEMasksOptions(num_views=1))
    reg = InfoNCEMasks(InfoNCEMasksOptions(num_views=2))
    with pytest.raises(ConfigError, match="view-major"):
        reg({"cls": torch.randn(5, 3)})
    with pytest.raises(ConfigError, match="at least 2 images"):
        reg({"cls": torch.randn(2, 3)})


WORKER = '''
import sys
import torch
from mimreg import distributed as dist
from mimreg.regularizers.infonce_masks import InfoNCEMasks, InfoNCEMasksOptions

dist.init_from_env("cpu")
rank = dist.rank()
views = torch.randn(3, 6, 4, generator=torch.Generator().manual_seed(0)).double()  # K=3 views of 6 images
part = slice(0, 3) if rank == 0 else slice(3, 6)  # all_gather needs equal shares
local = views[:, part].reshape(-1, 4).clone().requires_grad_(True)
loss = InfoNCEMasks(InfoNCEMasksOptions(num_views=3))({"cls": local})
loss.backward()
torch.save({"loss": loss.detach(), "grad": local.grad}, f"{sys.argv[1]}/rank{rank}.pt")
dist.shutdown()
'''


def test_two_processes_equal_one_process_on_the_global_batch(tmp_path, torchrun):
    """A real 2-process gloo run (torchrun, CPU): each rank holds view-major rows of its own images."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    torchrun([str(script), str(tmp_path)], tmp_path, timeout=120)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]

    views = torch.randn(3, 6, 4, generator=torch.Generator().manual_seed(0)).double()  # float64: exactness
    full = views.reshape(18, 4).clone().requires_grad_(True)
    expected = mask_infonce_loss(full, 3)
    expected.backward()
    grad = full.grad.reshape(3, 6, 4)
    for r, part in ((0, slice(0, 3)), (1, slice(3, 6))):
        assert ranks[r]["loss"].item() == pytest.approx(expected.item(), rel=1e-9)
        # all_gather's backward sums what every rank (each computing the same global loss) sends back:
        # world_size x the global gradient, which DDP's averaging over ranks turns into the exact one
        assert_close_at_scale(ranks[r]["grad"], 2 * grad[:, part].reshape(-1, 4), 1e-9, 2 * grad.abs().max().item())
