"""MSN (spec §3): the loss (sharpened targets, Sinkhorn, ME-MAX), the method (shared-permutation
masking of the anchor, EMA target, focal views at resized positions), its views, and the recipe."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mimreg.config import load_config
from mimreg.data import dataset_stats
from mimreg.data.transforms import MSNViews, msn_views
from mimreg.engine.checkpoint import load_checkpoint
from mimreg.engine.data import pretrain_views
from mimreg.engine.loop import pretrain
from mimreg.engine.metrics import read_metrics
from mimreg.engine.schedule import param_groups, weight_decay_at
from mimreg.errors import ConfigError
from mimreg.eval.frozen import load_encoder
from mimreg.methods import MSN, msn_loss
from mimreg.methods.msn import MSNOptions, sinkhorn
from mimreg.models import ViTEncoder

from support import assert_close_at_scale

pytestmark = pytest.mark.usefixtures("single_thread")


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# ---------------------------------------------------------------- msn_loss
def test_msn_loss_hand_computed_two_prototypes():
    # prototypes normalise to e1, e2; anchors to e1, e2; targets to (0.6, 0.8) and (0.6, -0.8)
    prototypes = torch.tensor([[2.0, 0.0], [0.0, 0.5]])
    anchors = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    targets = torch.tensor([[0.6, 0.8], [3.0, -4.0]])
    out = msn_loss(anchors, targets, prototypes, use_sinkhorn=False, gather=False)
    # anchor logits at tau 0.1: [10, 0] and [0, 10]; target logits at tau * T = 0.025: [24, 32], [24, -32]
    big, small = log_sigmoid(10.0), log_sigmoid(-10.0)  # log-softmax of [10, 0]
    q1 = (sigmoid(-8.0), sigmoid(8.0))
    q2 = (sigmoid(56.0), sigmoid(-56.0))
    ce1 = -(q1[0] * big + q1[1] * small)
    ce2 = -(q2[0] * small + q2[1] * big)
    assert out["msn"].item() == pytest.approx((ce1 + ce2) / 2, rel=1e-5)
    # the mean anchor prediction is exactly uniform: ME-MAX = log 2 - H(p) = 0
    assert out["memax"].item() == pytest.approx(0.0, abs=1e-6)


def test_memax_is_log_k_minus_entropy_and_scaled_by_its_weight():
    prototypes = torch.eye(2)
    anchors = torch.tensor([[1.0, 0.0]])
    targets = torch.tensor([[1.0, 0.0]])
    p = (sigmoid(10.0), sigmoid(-10.0))
    expected = math.log(2) + p[0] * math.log(p[0]) + p[1] * math.log(p[1])  # log K - H(mean p)
    assert expected > 0.6
    out = msn_loss(anchors, targets, prototypes, use_sinkhorn=False, gather=False)
    assert out["memax"].item() == pytest.approx(expected, rel=1e-5)
    weighted = msn_loss(anchors, targets, prototypes, use_sinkhorn=False, gather=False, memax_weight=5.0)
    assert weighted["memax"].item() == pytest.approx(5 * expected, rel=1e-5)
    assert weighted["msn"].item() == pytest.approx(out["msn"].item(), rel=1e-6)


def test_memax_zero_for_uniform_mean_and_positive_otherwise():
    torch.manual_seed(0)
    prototypes = torch.randn(6, 8)
    # anchors orthogonal to every prototype: every anchor prediction is uniform
    uniform = msn_loss(torch.zeros(4, 8), torch.randn(4, 8), prototypes, use_sinkhorn=False, gather=False)
    assert uniform["memax"].item() == pytest.approx(0.0, abs=1e-6)
    # all anchors on one prototype: a peaked mean prediction
    peaked = msn_loss(prototypes[:1].repeat(4, 1), torch.randn(4, 8), prototypes, use_sinkhorn=False, gather=False)
    assert peaked["memax"].item() > 0.1
    assert peaked["memax"].item() <= math.log(6) + 1e-5


def test_sharpening_a_softmax_is_a_softmax_at_tau_times_t():
    torch.manual_seed(1)
    logits = torch.randn(5, 7, dtype=torch.float64)
    tau, sharpen = 0.1, 0.25
    p = F.softmax(logits / tau, dim=1)
    sharpened = p ** (1 / sharpen)
    sharpened = sharpened / sharpened.sum(dim=1, keepdim=True)
    torch.testing.assert_close(sharpened, F.softmax(logits / (tau * sharpen), dim=1))


def reference_msn_ce(anchor, target, prototypes, tau=0.1, sharpen=0.25):
    """Spec §3.3 literally: sharpen(softmax(h_t . P / tau), T) against softmax(z_a . P / tau)."""
    a, t, p = (F.normalize(x.double(), dim=1) for x in (anchor, target, prototypes))
    q = F.softmax(t @ p.T / tau, dim=1) ** (1 / sharpen)
    q = (q / q.sum(dim=1, keepdim=True)).repeat(len(a) // len(t), 1)
    return -(q * F.log_softmax(a @ p.T / tau, dim=1)).sum(dim=1).mean()


def test_msn_loss_matches_spec_formula_with_view_major_repeats():
    torch.manual_seed(2)
    anchor, target, prototypes = torch.randn(3 * 4, 16), torch.randn(4, 16), torch.randn(10, 16)
    out = msn_loss(anchor, target, prototypes, use_sinkhorn=False, gather=False)
    assert out["msn"].item() == pytest.approx(reference_msn_ce(anchor, target, prototypes).item(), rel=1e-5)
    # views are view-major: anchor rows v*B + i match target row i
    per_view = [msn_loss(anchor[v * 4:(v + 1) * 4], target, prototypes, use_sinkhorn=False, gather=False)["msn"]
                for v in range(3)]
    assert out["msn"].item() == pytest.approx(torch.stack(per_view).mean().item(), rel=1e-5)


def test_targets_carry_no_gradient():
    torch.manual_seed(3)
    anchor = torch.randn(6, 8, requires_grad=True)
    target = torch.randn(3, 8, requires_grad=True)
    prototypes = torch.randn(5, 8, requires_grad=True)
    out = msn_loss(anchor, target, prototypes, use_sinkhorn=True, gather=False)
    (out["msn"] + out["memax"]).backward()
    assert target.grad is None
    assert anchor.grad is not None and prototypes.grad is not None
    # the prototype gradient is that of a loss whose targets are constants
    with torch.no_grad():
        t = F.normalize(target, dim=1)
        q = sinkhorn(F.softmax(t @ F.normalize(prototypes, dim=1).T / 0.025, dim=1)).repeat(2, 1)
    p2 = prototypes.detach().clone().requires_grad_(True)
    logits = F.normalize(anchor.detach(), dim=1) @ F.normalize(p2, dim=1).T / 0.1
    ce = -(q * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    mean_p = F.softmax(logits, dim=1).mean(dim=0)
    (ce + (mean_p * torch.log(mean_p + 1e-12)).sum() + math.log(5)).backward()
    assert_close_at_scale(prototypes.grad, p2.grad, 1e-4)


def test_sinkhorn_rows_sum_to_one_and_prototypes_are_balanced():
    torch.manual_seed(4)
    probs = F.softmax(torch.randn(12, 4) * 2, dim=1)
    q = sinkhorn(probs)
    assert q.shape == probs.shape and q.dtype == torch.float32
    assert (q >= 0).all()
    # the last step normalises each sample: rows sum to 1 exactly
    torch.testing.assert_close(q.sum(dim=1), torch.ones(12))
    # prototypes are used about equally: column sums near B / K = 3 after 3 iterations ...
    torch.testing.assert_close(q.sum(dim=0), torch.full((4,), 3.0), rtol=0.05, atol=0)
    # ... and exactly at convergence
    torch.testing.assert_close(sinkhorn(probs, iterations=200).sum(dim=0), torch.full((4,), 3.0), rtol=1e-4, atol=0)
    # balancing moves mass away from over-used prototypes
    assert q.sum(dim=0).std() < probs.sum(dim=0).std()


def test_sinkhorn_keeps_balanced_assignments_and_uniform_rows():
    # two samples per prototype, already balanced: unchanged
    onehot = torch.eye(3).repeat(2, 1)
    torch.testing.assert_close(sinkhorn(onehot), onehot)
    uniform = torch.full((5, 4), 0.25)
    torch.testing.assert_close(sinkhorn(uniform), uniform)


def test_duplicates_and_zero_vectors_stay_finite():
    anchor = torch.ones(8, 4, requires_grad=True)
    target = torch.ones(4, 4)
    prototypes = torch.ones(3, 4, requires_grad=True)  # identical prototypes
    for sinkhorn_on in (True, False):
        out = msn_loss(anchor, target, prototypes, use_sinkhorn=sinkhorn_on, gather=False)
        (out["msn"] + out["memax"]).backward()
        assert torch.isfinite(out["msn"]) and torch.isfinite(out["memax"])
        assert torch.isfinite(anchor.grad).all() and torch.isfinite(prototypes.grad).all()
        # identical prototypes: every prediction uniform, CE = log K and ME-MAX = 0
        assert out["msn"].item() == pytest.approx(math.log(3), rel=1e-5)
        assert out["memax"].item() == pytest.approx(0.0, abs=1e-6)
        anchor.grad = prototypes.grad = None
    zero = msn_loss(torch.zeros(2, 4), torch.zeros(2, 4), torch.randn(3, 4), gather=False)
    assert torch.isfinite(zero["msn"]) and torch.isfinite(zero["memax"])


def test_bf16_inputs_give_fp32_losses():
    torch.manual_seed(5)
    anchor, target, prototypes = torch.randn(8, 16), torch.randn(4, 16), torch.randn(6, 16)
    low = msn_loss(anchor.bfloat16(), target.bfloat16(), prototypes.bfloat16(), gather=False)
    ref = msn_loss(anchor.bfloat16().float(), target.bfloat16().float(), prototypes.bfloat16().float(), gather=False)
    for name in ("msn", "memax"):
        assert low[name].dtype == torch.float32
        assert low[name].item() == pytest.approx(ref[name].item(), rel=1e-6)


# ---------------------------------------------------------------- the method
def make_msn(**options) -> MSN:
    torch.manual_seed(0)
    opts = dict(proj_hidden_dim=32, proj_output_dim=16, num_prototypes=8, mask_ratio=0.3, gather=False)
    opts.update(options)
    return MSN(ViTEncoder("vit_micro", 32, 4), MSNOptions(**opts))


def msn_views_batch(batch: int = 4, focal: int = 2, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    large = [torch.randn(batch, 3, 32, 32, generator=g) for _ in range(2)]
    return large + [torch.randn(batch, 3, 16, 16, generator=g) for _ in range(focal)]


def test_forward_returns_msn_and_memax_and_matches_the_loss_on_its_parts():
    m = make_msn()
    with torch.no_grad():  # a target that differs from the online networks, as after some EMA steps
        for p in list(m.target_encoder.parameters()) + list(m.target_head.parameters()):
            p.add_(0.05 * torch.randn_like(p))
    m.double()  # float64: the same function computed in two ways, not fp32's rounding (ME-MAX is near 0)
    views = [v.double() for v in msn_views_batch()]
    out = m(views, needs=frozenset({"block.5"}), generator=torch.Generator().manual_seed(7))
    assert set(out.losses) == {"msn", "memax"}
    assert all(torch.isfinite(v) for v in out.losses.values())
    assert out.features["cls"].shape == (4, 128) and out.features["block.5"].shape == (4, 128)
    assert "block.0" not in out.features

    # the same loss rebuilt by hand: unmasked target view through the target networks; anchors are the
    # masked anchor view then the focal views (view-major), through the online networks
    keep = m.anchor_keep_ids(4, "cpu", torch.Generator().manual_seed(7))
    assert keep.shape == (4, int(64 * 0.7))
    with torch.no_grad():
        target = m.target_head(m.target_encoder.forward_masked(views[0], None).cls)
        anchor_cls = m.encoder.forward_masked(views[1], keep).cls
        focal_cls = m.encoder.forward_masked(torch.cat(views[2:]), None).cls
        anchors = m.head(torch.cat([anchor_cls, focal_cls]))
        expected = msn_loss(anchors, target, m.prototypes, gather=False)
    torch.testing.assert_close(out.features["cls"], anchor_cls, rtol=1e-10, atol=1e-10)
    assert out.losses["msn"].item() == pytest.approx(expected["msn"].item(), rel=1e-10)
    assert out.losses["memax"].item() == pytest.approx(expected["memax"].item(), rel=1e-10, abs=1e-12)
    # the mean feature pools the visible tokens only
    assert out.features["mean"].shape == (4, 128)


def test_anchor_masks_share_one_permutation_by_default():
    shared = make_msn().anchor_keep_ids(5, "cpu", torch.Generator().manual_seed(0))
    assert shared.shape == (5, 44)  # int(64 * 0.7)
    assert (shared == shared[0]).all()
    assert len(set(shared[0].tolist())) == 44 and int(shared.max()) < 64
    per_sample = make_msn(per_sample_masks=True).anchor_keep_ids(5, "cpu", torch.Generator().manual_seed(0))
    assert per_sample.shape == (5, 44)
    assert not all(set(row.tolist()) == set(per_sample[0].tolist()) for row in per_sample[1:])
    for row in per_sample:
        assert len(set(row.tolist())) == 44 and int(row.max()) < 64


def test_per_sample_masks_change_the_anchor_encoding():
    views = msn_views_batch()
    a = make_msn()(views, generator=torch.Generator().manual_seed(1))
    b = make_msn(per_sample_masks=True)(views, generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(a.features["cls"], b.features["cls"])


def test_only_the_online_networks_and_prototypes_get_gradients():
    m = make_msn()
    out = m(msn_views_batch())
    (out.losses["msn"] + out.losses["memax"]).backward()
    for name, p in m.named_parameters():
        if name.startswith(("target_encoder.", "target_head.")):
            assert not p.requires_grad and p.grad is None, name
    assert m.prototypes.grad is not None and m.prototypes.grad.abs().sum() > 0
    assert m.head[0].weight.grad is not None
    assert m.encoder.vit.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


def test_on_step_end_moves_the_target_by_one_minus_tau_and_ramps_tau():
    m = make_msn()
    with torch.no_grad():
        for p in list(m.encoder.parameters()) + list(m.head.parameters()):
            p.add_(torch.randn_like(p))
    online = {n: p.clone() for n, p in m.named_parameters() if n.startswith(("encoder.", "head."))}
    before = {n: p.clone() for n, p in m.named_parameters() if n.startswith("target_")}
    m.on_step_end(0.5)
    for name, old in before.items():
        source = online[name.removeprefix("target_")]
        moved = dict(m.named_parameters())[name]
        torch.testing.assert_close(moved, old + 0.004 * (source - old))
        assert moved.is_leaf and moved.grad_fn is None  # the update is not recorded by autograd
    assert float(m.tau) == pytest.approx(0.996 + 0.004 * 0.5)
    m.on_step_end(0.25)
    assert float(m.tau) == pytest.approx(0.997)
    m.on_step_end(1.0)
    assert float(m.tau) == 1.0
    frozen = {n: p.clone() for n, p in m.named_parameters() if n.startswith("target_")}
    m.on_step_end(1.0)  # tau 1: the target no longer moves
    for name, old in frozen.items():
        assert torch.equal(dict(m.named_parameters())[name], old)


def test_momentum_stretch_stops_the_ramp_short_of_one():
    m = make_msn(momentum_stretch=1.25)
    m.on_step_end(1.0)
    assert float(m.tau) == pytest.approx(0.996 + 0.004 / 1.25)  # 0.9992, spec §3.4
    m.on_step_end(0.5)
    assert float(m.tau) == pytest.approx(0.996 + 0.004 * 0.4)


@pytest.mark.parametrize("images", [torch.randn(2, 3, 32, 32), [torch.randn(2, 3, 32, 32)]])
def test_missing_views_are_a_config_error(images):
    with pytest.raises(ConfigError, match="data.augmentation"):
        make_msn()(images)


def test_two_views_without_focal_views_work():
    """Without focal views the anchors are the masked anchor view alone: the loss rebuilt by hand
    from it (float64) is the method's."""
    m = make_msn().double()
    views = [v.double() for v in msn_views_batch(focal=0)]
    out = m(views, generator=torch.Generator().manual_seed(7))
    keep = m.anchor_keep_ids(4, "cpu", torch.Generator().manual_seed(7))
    with torch.no_grad():
        target = m.target_head(m.target_encoder.forward_masked(views[0], None).cls)
        anchors = m.head(m.encoder.forward_masked(views[1], keep).cls)
        expected = msn_loss(anchors, target, m.prototypes, gather=False)
    assert out.losses["msn"].item() == pytest.approx(expected["msn"].item(), rel=1e-10)
    assert out.losses["memax"].item() == pytest.approx(expected["memax"].item(), rel=1e-10, abs=1e-12)
    assert out.losses["msn"].item() > 0.1  # a real cross-entropy, not a degenerate one


def test_prototypes_are_not_weight_decayed():
    m = make_msn()
    decay, no_decay = param_groups(m, 0.04)
    assert decay["weight_decay"] == 0.04 and no_decay["weight_decay"] == 0.0
    assert any(p is m.prototypes for p in no_decay["params"])
    assert not any(p is m.prototypes for p in decay["params"])
    assert any(p is m.head[0].weight for p in decay["params"])
    assert any(p is m.head[1].weight for p in no_decay["params"])  # BatchNorm
    grouped = {id(p) for g in (decay, no_decay) for p in g["params"]}
    for name, p in m.named_parameters():
        assert (id(p) in grouped) == p.requires_grad, name  # the frozen target networks are left out


# ---------------------------------------------------------------- views and resized positions
def test_msn_views_give_two_large_and_focal_small_views():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8))
    mean, std = dataset_stats("synthetic")
    torch.manual_seed(0)
    views = MSNViews(32, 3, 16, False, mean, std)(image)
    assert [tuple(v.shape) for v in views] == [(3, 32, 32)] * 2 + [(3, 16, 16)] * 3
    assert not torch.equal(views[0], views[1])  # independent augmentations
    assert [tuple(v.shape) for v in msn_views(24, 1, 8)(image)] == [(3, 24, 24)] * 2 + [(3, 8, 8)]


def test_msn_recipe_defaults_and_focal_size():
    cfg = load_config("digits/msn", ["data.name=synthetic"])
    o = cfg.method.options
    assert cfg.method.name == "msn" and o.use_sinkhorn and o.memax_weight == 1.0
    assert (o.proj_hidden_dim, o.mask_ratio) == (512, 0.3)  # digits preset's method_defaults
    assert (o.num_prototypes, o.proj_output_dim, o.momentum) == (1024, 256, 0.996)
    assert (cfg.data.augmentation, cfg.data.focal_views) == ("msn", 10)
    assert (cfg.optim.weight_decay, cfg.optim.weight_decay_end) == (0.04, 0.4)
    # the official code's optimizer: torch's AdamW betas, clipping at 3, every schedule over 1.25 x the run
    assert (tuple(cfg.optim.betas), cfg.optim.clip_grad, cfg.optim.schedule_stretch) == ((0.9, 0.999), 3.0, 1.25)
    assert o.momentum_stretch == 1.25
    views = pretrain_views(cfg, *dataset_stats("synthetic"))
    # 96/224 of 32 px, to the patch: 4 * round(32 * 96 / 224 / 4) = 12
    assert isinstance(views, MSNViews) and views.focal == 10
    image = Image.new("RGB", (32, 32), (120, 30, 200))
    assert [tuple(v.shape[1:]) for v in views(image)] == [(32, 32)] * 2 + [(12, 12)] * 10


def bicubic_half(grid: np.ndarray) -> np.ndarray:
    """(n, n, D) -> (n/2, n/2, D): PyTorch's bicubic (A = -0.75, align_corners False, clamped borders)
    at scale 1/2, which samples midway between source pixels 2i and 2i+1."""
    weights = np.array([-0.09375, 0.59375, 0.59375, -0.09375])
    n = grid.shape[0]

    def along(x: np.ndarray, axis: int) -> np.ndarray:
        out = []
        for i in range(n // 2):
            idx = np.clip(np.arange(2 * i - 1, 2 * i + 3), 0, n - 1)
            out.append(np.tensordot(weights, np.take(x, idx, axis=axis), axes=([0], [axis])))
        return np.stack(out, axis=axis)

    return along(along(grid, 0), 1)


def test_embed_patches_resizes_positions_bicubically_for_small_images():
    torch.manual_seed(0)
    enc = ViTEncoder("vit_micro", 32, 4)
    bias = enc.vit.patch_embed.proj.bias
    pos = enc.vit.pos_embed[0, 1:]
    with torch.no_grad():
        # full size: patch projection + the stored positions
        x = torch.randn(2, 3, 32, 32)
        torch.testing.assert_close(enc.embed_patches(x), enc.vit.patch_embed(x) + pos)
        torch.testing.assert_close(enc.embed_patches(torch.zeros(1, 3, 32, 32))[0] - bias, pos)
        # half size: a 4x4 grid with the same projection and the positions resized by bicubic interpolation
        small = torch.randn(2, 3, 16, 16)
        tokens = enc.embed_patches(small)
        assert tokens.shape == (2, 16, 128)
        positions = enc.embed_patches(torch.zeros(1, 3, 16, 16))[0] - bias
        expected = bicubic_half(pos.reshape(8, 8, 128).double().numpy()).reshape(16, 128)
        np.testing.assert_allclose(positions.double().numpy(), expected, rtol=1e-4, atol=1e-5)
        projection = enc.vit.patch_embed.proj(small).flatten(2).transpose(1, 2)
        torch.testing.assert_close(tokens, projection + positions)
        # and the small views run through the encoder
        assert enc.forward_masked(small, None).tokens.shape == (2, 16, 128)


# ---------------------------------------------------------------- the recipe, end to end
@pytest.fixture(scope="module")
def msn_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("msn") / "run"
    cfg = load_config("digits/msn", [
        "data.name=synthetic", "data.subset=64", "data.focal_views=2", "optim.batch_size=16", "train.epochs=1",
        "optim.warmup_epochs=0.25",
        "train.device=cpu", "train.progress=false", "train.log_every=1", "train.monitor_every=1",
        "method.proj_hidden_dim=64", "method.proj_output_dim=32", "method.num_prototypes=64"])
    pretrain(cfg, run_dir)
    return run_dir


def test_msn_recipe_trains_and_logs_its_terms(msn_run):
    train = [r for r in read_metrics(msn_run / "metrics.jsonl") if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    for rec in train:
        assert {"msn", "memax", "monitor/magma", "probe/ce", "loss"} <= set(rec)
        assert rec["loss"] == pytest.approx(rec["msn"] + rec["memax"], rel=1e-5)
        assert 0 <= rec["memax"] <= math.log(64)
    state = load_checkpoint(msn_run)
    model = state["model"]
    # the recipe's momentum_stretch 1.25: at the end of the run the ramp is at 1 / 1.25
    assert float(model["method.tau"]) == pytest.approx(0.996 + 0.004 / 1.25)
    name = "vit.blocks.0.attn.qkv.weight"
    assert not torch.equal(model[f"method.encoder.{name}"], model[f"method.target_encoder.{name}"])
    # weight decay followed the cosine 0.04 -> 0.4, stretched over 1.25 x 4 = 5 steps, to its last step
    # (step 3 of 5, short of 0.4); no decay on the rest
    groups = state["optimizer"]["param_groups"]
    assert groups[0]["weight_decay"] == pytest.approx(weight_decay_at(3, start=0.04, end=0.4, total_steps=5))
    assert groups[0]["weight_decay"] < weight_decay_at(3, start=0.04, end=0.4, total_steps=4)
    assert groups[1]["weight_decay"] == 0.0
    assert groups[0]["betas"] == (0.9, 0.999)


def test_frozen_evaluation_of_an_msn_run_uses_the_target_encoder(msn_run):
    encoder, _, _ = load_encoder(msn_run)
    model = load_checkpoint(msn_run)["model"]
    torch.testing.assert_close(encoder.vit.blocks[0].attn.qkv.weight,
                               model["method.target_encoder.vit.blocks.0.attn.qkv.weight"])


@pytest.mark.parametrize("use_sinkhorn", [True, False])
def test_msn_loss_gradcheck_float64(use_sinkhorn):
    """Gradient of CE + ME-MAX with respect to the anchors. (Not the prototypes: the targets are
    computed from them without gradient, so finite differences see a change autograd must not.)"""
    g = torch.Generator().manual_seed(5)
    anchor = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)  # 2 views x 3
    target = torch.randn(3, 4, generator=g, dtype=torch.float64)
    protos = torch.randn(5, 4, generator=g, dtype=torch.float64)

    def total(a):
        out = msn_loss(a, target, protos, anchor_temperature=0.5, sharpen=0.5, memax_weight=2.0,
                       use_sinkhorn=use_sinkhorn)
        return out["msn"] + out["memax"]

    assert torch.autograd.gradcheck(total, (anchor,))


def test_gradient_clipping_covers_the_encoder_and_head_not_the_prototypes():
    """MSN's official code clips `encoder.parameters()` (its head included), never the prototypes."""
    from mimreg.engine.build import build_trainee

    trainee = build_trainee(load_config("digits/msn"), num_classes=10)
    clipped = {id(p) for p in trainee.method.clipped_parameters()}
    names = {name for name, p in trainee.named_parameters() if id(p) in clipped}
    assert "method.prototypes" not in names and not any(n.startswith("probe.") for n in names)
    assert any(n.startswith("method.encoder.") for n in names) and any(n.startswith("method.head.") for n in names)
    online = {n for n, p in trainee.method.named_parameters() if p.requires_grad and n != "prototypes"}
    assert {n.removeprefix("method.") for n in names if trainee.get_parameter(n).requires_grad} == online


def test_clipping_covers_the_trained_encoder_and_head_only():
    m = make_msn()
    clipped = {id(p) for p in m.clipped_parameters()}
    names = {n for n, p in m.named_parameters() if id(p) in clipped}
    assert names == {n for n, p in m.named_parameters() if n.startswith(("encoder.", "head.")) and p.requires_grad}
    assert "prototypes" not in names and not any(n.startswith("target_") for n in names)
