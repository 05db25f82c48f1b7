import math

import numpy as np
import pytest
import torch

from mimreg.config import load_config
from mimreg.engine.build import build_trainee
from mimreg.errors import ConfigError
from mimreg.regularizers import REGULARIZERS, mmcr_loss
from mimreg.regularizers.mmcr import Mmcr, MmcrOptions
from support import regularized_run

pytestmark = pytest.mark.usefixtures("single_thread")


def mmcr_by_numpy(views: list[np.ndarray], local_weight: float, normalize: bool = True) -> float:
    """The official loss written out image by image: centroid rows, then numpy's SVD."""
    batch = views[0].shape[0]
    per_image = []
    for b in range(batch):
        rows = [v[b].astype(np.float64) for v in views]
        if normalize:
            rows = [r / np.sqrt((r * r).sum()) for r in rows]
        per_image.append(np.stack(rows))  # (V, D)
    centroids = np.stack([sum(z) / len(z) for z in per_image])
    local = sum(np.linalg.svd(z, compute_uv=False).sum() for z in per_image)
    return local_weight * local / batch - np.linalg.svd(centroids, compute_uv=False).sum()


def two_images(scale=1.0):
    """Image 0 in dims (0, 1), views at +-30 degrees; image 1 in dims (2, 3), views at +-45 degrees."""
    a, b = math.pi / 6, math.pi / 4
    v0 = torch.tensor([[math.cos(a), math.sin(a), 0, 0], [0, 0, math.cos(b), math.sin(b)]], dtype=torch.float64)
    v1 = torch.tensor([[math.cos(a), -math.sin(a), 0, 0], [0, 0, math.cos(b), -math.sin(b)]], dtype=torch.float64)
    return v0 * scale, v1 * scale


def test_hand_computed_orthogonal_images():
    # centroids (cos a, 0, 0, 0) and (0, 0, cos b, 0): orthogonal rows, singular values their norms;
    # each image's (2, D) views have singular values sqrt(2) cos and sqrt(2) sin
    a, b = math.pi / 6, math.pi / 4
    global_nuc = math.cos(a) + math.cos(b)
    local_nuc = math.sqrt(2) * (math.cos(a) + math.sin(a) + math.cos(b) + math.sin(b))
    v0, v1 = two_images(scale=3.0)
    assert mmcr_loss(v0, v1).item() == pytest.approx(-global_nuc, rel=1e-12)
    assert mmcr_loss(v0, v1, local_weight=0.5).item() == pytest.approx(0.5 * local_nuc / 2 - global_nuc, rel=1e-12)
    # lightly's form: no normalisation, so the scale of the rows stays
    assert mmcr_loss(v0, v1, normalize=False).item() == pytest.approx(-3 * global_nuc, rel=1e-12)


@pytest.mark.parametrize("views,local_weight", [(2, 0.0), (2, 0.3), (3, 5e-3)])
def test_matches_numpy_image_by_image(views, local_weight):
    g = torch.Generator().manual_seed(views)
    zs = [torch.randn(9, 6, generator=g, dtype=torch.float64) for _ in range(views)]
    expected = mmcr_by_numpy([z.numpy() for z in zs], local_weight)
    assert mmcr_loss(*zs, local_weight=local_weight).item() == pytest.approx(expected, rel=1e-12)
    unnormalised = mmcr_by_numpy([z.numpy() for z in zs], local_weight, normalize=False)
    assert mmcr_loss(*zs, local_weight=local_weight, normalize=False).item() == pytest.approx(unnormalised, rel=1e-12)
    assert mmcr_loss(*[z.float() for z in zs], local_weight=local_weight).item() == pytest.approx(expected, rel=1e-5)


def test_gradcheck_float64():
    z0 = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    z1 = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: mmcr_loss(a, b, local_weight=0.2), (z0, z1))
    assert torch.autograd.gradcheck(lambda a, b: mmcr_loss(a, b, normalize=False), (z0, z1))


def test_invariances_and_fp32_from_bf16():
    g = torch.Generator().manual_seed(0)
    z0, z1 = (torch.randn(12, 5, generator=g, dtype=torch.float64) for _ in range(2))
    ref = mmcr_loss(z0, z1, local_weight=0.1).item()
    perm = torch.randperm(12)
    assert mmcr_loss(z0[perm], z1[perm], local_weight=0.1).item() == pytest.approx(ref, rel=1e-12)  # images
    assert mmcr_loss(z1, z0, local_weight=0.1).item() == pytest.approx(ref, rel=1e-12)  # views
    scale = torch.rand(12, 1, dtype=torch.float64) * 10 + 0.1
    assert mmcr_loss(z0 * scale, z1, local_weight=0.1).item() == pytest.approx(ref, rel=1e-10)  # rows, normalised
    assert mmcr_loss(z0.bfloat16(), z1.bfloat16()).dtype == torch.float32


def test_degenerate_inputs_are_finite():
    for z in (torch.zeros(4, 3), torch.ones(4, 3)):  # all-zero rows; one direction for all
        a, b = z.clone().requires_grad_(True), z.clone().requires_grad_(True)
        loss = mmcr_loss(a, b, local_weight=0.1)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()
    # one direction: centroids of rank 1, singular value sqrt(4); each image's views: sqrt(2)
    assert mmcr_loss(torch.ones(4, 3), torch.ones(4, 3), local_weight=0.1).item() == pytest.approx(
        -2 + 0.1 * math.sqrt(2), rel=1e-6)
    with pytest.raises(ValueError, match="at least 2 views"):
        mmcr_loss(torch.randn(4, 3))
    with pytest.raises(ValueError, match="one \\(B, D\\) shape"):
        mmcr_loss(torch.randn(4, 3), torch.randn(4, 2))


def test_training_raises_the_centroid_rank():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(16, 1, generator=g) * torch.ones(1, 8) + 0.05 * torch.randn(16, 8, generator=g)
    z0, z1 = base.clone().requires_grad_(True), (base + 0.01).requires_grad_(True)
    opt = torch.optim.SGD([z0, z1], lr=0.5)
    start = mmcr_loss(z0, z1).item()
    for _ in range(30):
        opt.zero_grad()
        mmcr_loss(z0, z1).backward()
        opt.step()
    assert mmcr_loss(z0, z1).item() < start - 4.0  # -5.1 -> -10.4: from two directions (+-) to a spread


def test_module_defaults_and_view_checks():
    assert REGULARIZERS["mmcr"] is Mmcr
    reg = Mmcr(MmcrOptions())
    assert (reg.weight, reg.gather, reg.reads()) == (1.0, True, ("emb.0", "emb.1"))
    assert (reg.options.local_weight, reg.options.normalize) == (0.0, True)  # the official scripts' defaults
    feats = {"emb.0": torch.randn(8, 5), "emb.1": torch.randn(8, 5)}
    assert reg(feats).item() == pytest.approx(mmcr_loss(feats["emb.0"], feats["emb.1"]).item(), rel=1e-6)
    with pytest.raises(ConfigError, match=r"^regularizers\.mmcr\.features needs the features of at least 2 views"):
        load_config("simclr", ["regularizers=[{name: mmcr, features: [emb.0]}]"])
    with pytest.raises(ConfigError, match=r"^regularizers\.mmcr\.local_weight=-1\.0 is out of range: it must be >= 0"):
        load_config("simclr", ["regularizers=[{name: mmcr, local_weight: -1.0}]"])


def test_a_method_with_one_view_is_refused(tiny_config):
    cfg = tiny_config("mae", regularizers=[{"name": "mmcr"}])
    with pytest.raises(ConfigError, match=r"regularizer 'mmcr' reads feature\(s\) \['emb\.0', 'emb\.1'\] that "
                                          r"method 'mae' does not produce"):
        build_trainee(cfg)


def test_composes_with_simclr(tmp_path, tiny_config):
    rows = regularized_run("simclr", {"name": "mmcr"}, tmp_path / "run", tiny_config)
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        # 32 images: the nuclear norm of 32 unit-or-shorter centroid rows lies in (0, sqrt(16 x 32)]
        assert -math.sqrt(16 * 32) <= r["reg/mmcr"] < 0 and r["weight/mmcr"] == 1.0
        assert r["loss"] == pytest.approx(r["nt_xent"] + r["reg/mmcr"], rel=1e-5)
