import math

import numpy as np
import pytest
import torch

from mimreg.config import load_config
from mimreg.engine.loop import pretrain
from mimreg.engine.metrics import read_metrics
from mimreg.errors import ConfigError
from mimreg.regularizers import REGULARIZERS, coding_rate_loss
from mimreg.regularizers.coding_rate import CodingRate, CodingRateOptions


def reference(z: np.ndarray, variant: str, eps: float | None = None, mu: float = 1.0) -> float:
    """The official formulas written independently: rows normalised by a loop, the d x d matrix
    always (never the n x n one), its log-determinant from numpy's eigenvalues."""
    z = np.array([row / np.sqrt(sum(v * v for v in row)) for row in z], dtype=np.float64)
    n, d = z.shape
    cov = np.zeros((d, d))
    for row in z:
        cov += np.outer(row, row)
    if variant == "m_mae":
        return -float(np.sum(np.log(np.linalg.eigvalsh(np.eye(d) + mu / d * cov))))
    eps = {"emp_ssl": 0.2, "simdino": 0.5}[variant] if eps is None else eps
    rate = 0.5 * float(np.sum(np.log(np.linalg.eigvalsh(np.eye(d) + d / (n * eps) * cov))))
    return -rate if variant == "emp_ssl" else -(d + n) / (d * n) * rate


def test_orthonormal_rows_hand_computed():
    # Z = 3 * I (3 x 3), normalised to I: Z^T Z = I, every eigenvalue of the logdet is 1 + scale
    z = 3 * torch.eye(3, dtype=torch.float64)
    assert coding_rate_loss(z, "emp_ssl").item() == pytest.approx(-1.5 * math.log(1 + 1 / 0.2))  # d/(n eps) = 5
    assert coding_rate_loss(z, "m_mae").item() == pytest.approx(-3 * math.log(1 + 1 / 3))  # mu/d = 1/3
    # simdino: gamma (3 + 3)/9, 1/2 * 3 log(1 + 1/0.5)
    assert coding_rate_loss(z, "simdino").item() == pytest.approx(-(6 / 9) * 1.5 * math.log(3))


def test_collapsed_batch_hand_computed():
    # n = 4 copies of one direction in d = 5: Z^T Z = 4 u u^T, det(I + s 4 u u^T) = 1 + 4 s
    z = torch.tensor([[2.0, 0, 0, 0, 0]] * 4, dtype=torch.float64)
    assert coding_rate_loss(z, "emp_ssl").item() == pytest.approx(-0.5 * math.log(1 + 4 * 5 / (4 * 0.2)))
    assert coding_rate_loss(z, "m_mae", mu=2.0).item() == pytest.approx(-math.log(1 + 4 * 2 / 5))
    assert coding_rate_loss(z, "simdino", eps=0.1).item() == pytest.approx(
        -(9 / 20) * 0.5 * math.log(1 + 4 * 5 / (4 * 0.1)))


@pytest.mark.parametrize("variant", ["emp_ssl", "m_mae", "simdino"])
@pytest.mark.parametrize("n,d", [(12, 5), (4, 9)])  # both Gram matrices: d x d and n x n
def test_matches_independent_formula(variant, n, d):
    z = torch.randn(n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(n * d))
    assert coding_rate_loss(z, variant).item() == pytest.approx(reference(z.numpy(), variant), rel=1e-10)
    assert coding_rate_loss(z, variant, eps=0.05, mu=3.0).item() == pytest.approx(
        reference(z.numpy(), variant, eps=0.05, mu=3.0), rel=1e-10)


def test_spread_features_have_a_lower_loss_than_collapsed_ones():
    spread = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
    collapsed = torch.randn(64, 1, generator=torch.Generator().manual_seed(1)).abs() * torch.ones(1, 8)
    for variant in ("emp_ssl", "m_mae", "simdino"):
        assert coding_rate_loss(spread, variant) < coding_rate_loss(collapsed, variant) - 0.1


def test_invariances_and_normalisation():
    z = torch.randn(10, 6, dtype=torch.float64)
    perm = torch.randperm(10)
    scales = torch.rand(10, 1, dtype=torch.float64) * 5 + 0.1
    for variant in ("emp_ssl", "m_mae", "simdino"):
        ref = coding_rate_loss(z, variant).item()
        assert coding_rate_loss(z[perm], variant).item() == pytest.approx(ref, rel=1e-12)
        assert coding_rate_loss(z * scales, variant).item() == pytest.approx(ref, rel=1e-12)  # per-row scale
    raw = coding_rate_loss(z, "emp_ssl", normalize=False)  # lightly's form: z as given
    assert coding_rate_loss(2 * z, "emp_ssl", normalize=False) < raw


def test_fp32_inside_under_bf16():
    z = torch.randn(16, 8)
    out = coding_rate_loss(z.bfloat16(), "m_mae")
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(coding_rate_loss(z.bfloat16().float(), "m_mae").item(), rel=1e-6)


@pytest.mark.parametrize("variant", ["emp_ssl", "m_mae", "simdino"])
@pytest.mark.parametrize("shape", [(6, 4), (3, 5)])
def test_gradcheck_float64(variant, shape):
    z = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: coding_rate_loss(x, variant), (z,))


def test_bad_inputs():
    with pytest.raises(ValueError, match="variant must be one of"):
        coding_rate_loss(torch.randn(4, 3), "mcr2")
    with pytest.raises(ValueError, match=r"needs a \(n, d\) tensor"):
        coding_rate_loss(torch.randn(2, 4, 3))


def test_module_defaults_weight_per_variant_and_mean_over_features():
    assert REGULARIZERS["coding_rate"] is CodingRate
    reg = CodingRate(CodingRateOptions())
    assert (reg.reads(), reg.weight, reg.options.variant) == (("cls",), 0.01, "m_mae")  # M-MAE's lamb
    assert CodingRate(CodingRateOptions(variant="emp_ssl")).weight == 1.0  # EMP-SSL's --tcr
    assert CodingRate(CodingRateOptions(variant="simdino")).weight == 1.0
    assert CodingRate(CodingRateOptions(variant="emp_ssl"), weight=0.3).weight == 0.3
    feats = {"emb.0": torch.randn(16, 8), "emb.1": torch.randn(16, 8)}
    views = CodingRate(CodingRateOptions(variant="simdino", features=["emb.0", "emb.1"], eps=0.05))
    expected = (coding_rate_loss(feats["emb.0"], "simdino", 0.05) + coding_rate_loss(feats["emb.1"], "simdino", 0.05)) / 2
    assert views(feats).item() == pytest.approx(expected.item(), rel=1e-6)
    with pytest.raises(ConfigError, match="batch-wide"):
        reg({"cls": torch.randn(1, 8)})


def test_options_are_refused_with_the_key():
    with pytest.raises(ConfigError, match=r"^regularizers\.coding_rate\.variant: unknown value 'mcr2'; choose one of"):
        load_config("mae+coding-rate", ["regularizers.coding_rate.variant=mcr2"])
    with pytest.raises(ConfigError, match=r"^regularizers\.coding_rate\.eps is not used by variant m_mae"):
        load_config("mae+coding-rate", ["regularizers.coding_rate.eps=0.2"])
    with pytest.raises(ConfigError, match=r"^regularizers\.coding_rate\.mu is used only by variant m_mae"):
        load_config("simclr+coding-rate", ["regularizers.coding_rate.mu=2"])
    with pytest.raises(ConfigError, match=r"^regularizers\.coding_rate\.features must name at least one"):
        load_config("mae+coding-rate", ["regularizers.coding_rate.features=[]"])
    with pytest.raises(ConfigError, match=r"^regularizers\.coding_rate\.eps=0\.0 is out of range: it must be > 0"):
        CodingRate(CodingRateOptions(variant="emp_ssl", eps=0.0))
    with pytest.raises(ConfigError, match=r"^regularizers\.coding_rate\.mu=-1\.0 is out of range"):
        CodingRate(CodingRateOptions(mu=-1.0))


# the joint methods' tiny run (tests/methods/test_joint_training.py), 96 images: 3 steps x 2 epochs
JOINT_SETS = ("data.name=synthetic", "data.img_size=32", "model.arch=vit_micro", "model.patch_size=8",
              "optim.batch_size=32", "optim.warmup_epochs=0.5", "data.subset=96", "train.epochs=2",
              "train.device=cpu", "train.progress=false", "train.log_every=1", "train.monitor_every=1000",
              "method.proj_hidden_dim=64", "method.proj_output_dim=32")


def short_run(cfg, run_dir) -> list[dict]:
    pretrain(cfg, run_dir)
    return [r for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "train"]


@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize("recipe", ["mae+coding-rate", "simclr+coding-rate"])
def test_composes_with_mae_and_simclr(recipe, tiny_config, tmp_path):
    """A few steps on tiny synthetic data: the term is logged every step, finite and negative, and
    the total loss goes down."""
    if recipe.startswith("mae"):
        cfg = tiny_config(recipe, "data.subset=96", "train.epochs=2", "optim.lr=1e-3")
    else:
        cfg = load_config(f"digits/{recipe}", list(JOINT_SETS))
    train = short_run(cfg, tmp_path / "run")
    terms = [r["reg/coding_rate"] for r in train]
    assert len(terms) == 6 and all(math.isfinite(t) and t < 0 for t in terms)
    assert train[0]["weight/coding_rate"] == (0.01 if recipe.startswith("mae") else 1.0)
    assert train[-1]["loss"] < train[0]["loss"], [r["loss"] for r in train]
