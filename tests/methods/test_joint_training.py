"""The joint-embedding interface (views, features, projector MLP), and 30-step training runs of
every joint-embedding recipe on `synthetic` through the real pretraining loop.

L_MSE alone is not among the runs: in 30 steps its embeddings do not collapse measurably more than
with T-REGS (normalised projector std 0.074 alone vs 0.091 with mst at lr 1e-3; 0.053 vs 0.088 at
lr 5e-3), so the collapse of L_MSE and its prevention by T-REGS are shown on the projector alone in
test_mse.py, where they are unmistakable."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mimreg.analysis import effective_rank
from mimreg.config import load_config
from mimreg.engine.loop import pretrain
from mimreg.engine.metrics import read_metrics
from mimreg.errors import ConfigError
from mimreg.methods import METHODS
from mimreg.methods.joint import JointEmbedding, mlp
from mimreg.models import ViTEncoder

from support import normalised_std, run_summary

pytestmark = pytest.mark.usefixtures("single_thread")

JOINT = ["simclr", "vicreg", "barlow", "byol", "mse"]


def make_method(name: str, **options) -> JointEmbedding:
    torch.manual_seed(0)
    cls = METHODS[name]
    extra = {"pred_hidden_dim": 24} if name == "byol" else {}
    return cls(ViTEncoder("vit_micro", 32, 8), cls.Options(proj_hidden_dim=32, proj_output_dim=16, **extra, **options))


# ---------------------------------------------------------------- the interface


def test_mlp_structure():
    net = mlp([8, 16, 12, 4])
    kinds = [type(m) for m in net]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    linears = [m for m in net if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(8, 16), (16, 12), (12, 4)]
    assert [m.bias is None for m in linears] == [True, True, False]  # no bias right before a BN
    assert [m.num_features for m in net if isinstance(m, nn.BatchNorm1d)] == [16, 12]
    plain = mlp([8, 16, 4], batch_norm=False)
    assert [type(m) for m in plain] == [nn.Linear, nn.ReLU, nn.Linear]
    assert all(m.bias is not None for m in plain if isinstance(m, nn.Linear))
    last = mlp([8, 16, 4], last_batch_norm=True)
    assert isinstance(last[-1], nn.BatchNorm1d) and not last[-1].affine and last[-1].num_features == 4
    assert mlp([8, 4])[0].bias is not None and len(mlp([8, 4])) == 1
    # BN + ReLU between layers: the hidden output of a batch is standardised, then half-rectified
    x = torch.randn(64, 8) * 5 + 3
    hidden = net[:3](x)
    assert (hidden >= 0).all() and hidden.mean().item() == pytest.approx(0.4, abs=0.1)


@pytest.mark.parametrize("name", JOINT)
def test_a_single_tensor_is_refused_with_the_setting_to_change(name):
    model = make_method(name)
    x = torch.randn(4, 3, 32, 32)
    with pytest.raises(ConfigError, match=r"data\.num_views") as info:
        model(x)
    assert "got 1" in str(info.value)
    with pytest.raises(ConfigError, match=r"got 3"):
        model([x, x, x])
    model((x, x))  # a tuple of two views is fine


@pytest.mark.parametrize("name", JOINT)
def test_features_are_view_major(name):
    # eval: BN uses running statistics, so rows are independent; float64: the same function, not
    # fp32's rounding in kernels that depend on the batch size
    model = make_method(name).double().eval()
    b = 3
    v0, v1 = torch.randn(b, 3, 32, 32).double(), torch.randn(b, 3, 32, 32).double()
    assert model.feature_names() == {"cls", "emb.0", "emb.1", *(f"block.{i}" for i in range(6))}
    out = model([v0, v1])
    assert set(out.features) == {"cls", "emb.0", "emb.1"}  # no blocks unless requested
    cls = out.features["cls"]
    assert cls.shape == (2 * b, 128)
    torch.testing.assert_close(cls[:b], model.encoder.forward_masked(v0, None).cls, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(cls[b:], model.encoder.forward_masked(v1, None).cls, rtol=1e-10, atol=1e-10)
    for v in range(2):
        assert out.features[f"emb.{v}"].shape == (b, 16)
        torch.testing.assert_close(out.features[f"emb.{v}"], model.projector(cls[v * b:(v + 1) * b]), rtol=1e-10,
                                   atol=1e-10)
    blocks = model([v0, v1], needs=frozenset({"block.2", "block.5", "cls"})).features
    assert {"block.2", "block.5"} <= set(blocks) and "block.0" not in blocks
    assert blocks["block.2"].shape == (2 * b, 128)
    pooled = model.encoder.forward_masked(v1, None, [2]).pooled_blocks[2]
    torch.testing.assert_close(blocks["block.2"][b:], pooled, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------- BatchNorm per view or over both views
def test_bn_views_defaults_follow_the_official_codes():
    defaults = {name: METHODS[name].Options().bn_views for name in JOINT}
    assert defaults == {"simclr": "joint", "vicreg": "per_view", "barlow": "per_view", "byol": "per_view",
                        "mse": "per_view"}
    assert load_config("digits/vicreg", ["method.bn_views=joint"]).method.options.bn_views == "joint"
    with pytest.raises(ConfigError, match=r"method\.bn_views: unknown value 'both'; choose one of"):
        load_config("digits/barlow", ["method.bn_views=both"])


def two_views_of_different_statistics(b: int = 6) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return [torch.randn(b, 3, 32, 32, generator=g), 3 * torch.randn(b, 3, 32, 32, generator=g) + 1]


@pytest.mark.parametrize("name", JOINT)
def test_per_view_batch_norm_runs_each_view_through_the_projector_alone(name):
    views = two_views_of_different_statistics()
    per_view, joint = make_method(name, bn_views="per_view"), make_method(name, bn_views="joint")
    got = {mode: model(views).features for mode, model in (("per_view", per_view), ("joint", joint))}
    cls = got["per_view"]["cls"]
    alone = [per_view.projector(v) for v in cls.chunk(2)]  # train mode: each view's own batch statistics
    together = joint.projector(cls).chunk(2)
    for v in range(2):
        torch.testing.assert_close(got["per_view"][f"emb.{v}"], alone[v], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got["joint"][f"emb.{v}"], together[v], rtol=1e-5, atol=1e-5)
        # views of different statistics: normalising them together gives other embeddings
        difference = (got["per_view"][f"emb.{v}"] - got["joint"][f"emb.{v}"]).abs().max()
        assert difference > 0.1 * alone[v].abs().max()


@pytest.mark.parametrize("bn_views", ["per_view", "joint"])
def test_running_statistics_follow_the_batches_that_were_normalised(bn_views):
    model = make_method("vicreg", bn_views=bn_views)
    bn, m = model.projector[1], model.projector[1].momentum
    before_mean, before_var = bn.running_mean.clone(), bn.running_var.clone()
    views = two_views_of_different_statistics()
    cls = model(views).features["cls"]
    with torch.no_grad():
        hidden = model.projector[0](cls)  # what the first BatchNorm normalised
    if bn_views == "per_view":  # one update per view, in view order (each view through the projector)
        mean, var = before_mean, before_var
        for h in hidden.chunk(2):
            mean, var = (1 - m) * mean + m * h.mean(0), (1 - m) * var + m * h.var(0)
    else:
        mean, var = (1 - m) * before_mean + m * hidden.mean(0), (1 - m) * before_var + m * hidden.var(0)
    torch.testing.assert_close(bn.running_mean, mean, rtol=1e-4, atol=1e-5 * mean.abs().max().item())
    torch.testing.assert_close(bn.running_var, var, rtol=1e-4, atol=1e-5 * var.abs().max().item())
    assert int(bn.num_batches_tracked) == (2 if bn_views == "per_view" else 1)


# ---------------------------------------------------------------- 30 training steps

# vit_micro with 8x8 patches (16 tokens + cls) on 32x32 synthetic images keeps a step of
# 2 x 32 views near 0.25 s on one busy CPU core (about 40% of it in the SimCLR augmentation);
# 320 images / 32 = 10 steps x 3 epochs = 30 steps.
SETS = ("data.name=synthetic", "data.img_size=32", "model.arch=vit_micro", "model.patch_size=8",
        "optim.batch_size=32", "optim.warmup_epochs=0.5", "data.subset=320", "train.epochs=3",
        "train.device=cpu", "train.progress=false", "train.log_every=1", "train.monitor_every=1000",
        "method.proj_hidden_dim=64", "method.proj_output_dim=32")

RECIPES = {  # recipe -> the logged terms that make up the method's loss
    "simclr": ["nt_xent"],
    "vicreg": ["invariance", "variance", "covariance"],
    "barlow": ["barlow"],
    "byol": ["byol"],
    "mse+t-regs": ["mse"],  # reg/mst is logged apart
}

# Measured after the 30 steps, BatchNorm per view but for SimCLR (normalised std of the embeddings
# of the 256 test images; an untrained network gives 0.066-0.097 for the projector and 0.066 for
# cls, total collapse gives 0; 1/sqrt(d) is the value of directions spread evenly). The floors are ~60% of the smallest value.
MIN_PROJECTOR_STD = 0.055  # measured 0.098 (mse+t-regs) .. 0.165 (vicreg); 1/sqrt(32) = 0.177
MIN_CLS_STD = 0.045  # measured 0.076 .. 0.078; 1/sqrt(128) = 0.088
MIN_CLS_ERANK = 3.0  # measured 7.7 .. 9.3 (33.7 at initialisation; 1 for a rank-one collapse)

RESULTS: dict[str, dict] = {}


def train(recipe: str, tmp_path_factory, trained_on_synthetic) -> dict:
    if recipe in RESULTS:
        return RESULTS[recipe]
    extra = ["method.pred_hidden_dim=64"] if recipe == "byol" else []
    cfg = load_config(f"digits/{recipe}", [*SETS, *extra])
    assert (cfg.data.num_views, cfg.data.augmentation) == (2, "simclr")
    run_dir = tmp_path_factory.mktemp(recipe.replace("+", "_")) / "run"
    result = pretrain(cfg, run_dir)
    records = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "train"]
    losses = [sum(r[name] for name in RECIPES[recipe]) for r in records]

    trainee, images = trained_on_synthetic(cfg, result.checkpoint)
    with torch.no_grad():
        cls = trainee.method.encoder.features(images)
        z = trainee.method.projector(cls)
    RESULTS[recipe] = out = run_summary(
        recipe, result.steps, losses, cls, logged=set(records[-1]), tau=float(getattr(trainee.method, "tau", float("nan"))),
        z_std=normalised_std(z), z_raw_std=z.std(dim=0).mean().item(), z_erank=effective_rank(z))
    return out


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_loss_goes_down(recipe, tmp_path_factory, trained_on_synthetic):
    run = train(recipe, tmp_path_factory, trained_on_synthetic)
    assert run["steps"] == 30 and len(run["losses"]) == 30
    assert all(torch.isfinite(torch.tensor(run["losses"])))
    assert run["last"] < 0.95 * run["first"], (run["first"], run["last"])
    if recipe == "mse+t-regs":
        assert {"reg/mst", "weight/mst"} <= run["logged"]
    if recipe == "byol":  # on_step_end ran after every step: the momentum reached 1 at the end
        assert run["tau"] == 1.0


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_no_collapse(recipe, tmp_path_factory, trained_on_synthetic):
    run = train(recipe, tmp_path_factory, trained_on_synthetic)
    assert run["z_std"] > MIN_PROJECTOR_STD, run
    assert run["cls_std"] > MIN_CLS_STD, run
    assert run["cls_erank"] > MIN_CLS_ERANK, run
