"""SimMIM: block-wise masks, the masked L1 loss, mask tokens in the encoder, and its recipes."""

from __future__ import annotations

import math

import pytest
import torch

from mimreg.config import load_config
from mimreg.engine.loop import pretrain
from mimreg.engine.metrics import read_metrics
from mimreg.errors import ConfigError
from mimreg.methods import SimMIM, masked_l1_loss
from mimreg.methods.simmim import SimMIMOptions, block_mask
from mimreg.models import ViTEncoder, patchify

pytestmark = pytest.mark.usefixtures("single_thread")


# ---------------------------------------------------------------- block_mask
@pytest.mark.parametrize("grid, unit, ratio", [(8, 2, 0.6), (8, 4, 0.5), (8, 1, 0.3), (6, 3, 0.6), (8, 2, 0.75)])
def test_block_mask_masks_whole_blocks_ceil_ratio_times_blocks(grid, unit, ratio):
    mask = block_mask(6, grid, unit, ratio, generator=torch.Generator().manual_seed(0))
    assert mask.shape == (6, grid * grid) and mask.dtype == torch.float32
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    side = grid // unit
    blocks = mask.view(6, side, unit, side, unit)
    # every unit x unit block is all masked or all visible
    assert (blocks.amax(dim=(2, 4)) == blocks.amin(dim=(2, 4))).all()
    count = math.ceil(side * side * ratio)
    assert (blocks[:, :, 0, :, 0].sum(dim=(1, 2)) == count).all()
    assert (mask.sum(dim=1) == count * unit * unit).all()


def test_block_mask_hand_checked_positions_and_randomness():
    mask = block_mask(4, 4, 2, 0.25, generator=torch.Generator().manual_seed(3))
    # a 4x4 grid has 4 blocks of 2x2; one block (4 patches) per image
    for row in mask.view(4, 4, 4):
        ones = row.nonzero().tolist()
        assert len(ones) == 4
        (r0, c0) = ones[0]
        assert r0 % 2 == 0 and c0 % 2 == 0
        assert sorted(ones) == [[r0, c0], [r0, c0 + 1], [r0 + 1, c0], [r0 + 1, c0 + 1]]
    again = block_mask(4, 4, 2, 0.25, generator=torch.Generator().manual_seed(3))
    assert torch.equal(mask, again)
    many = block_mask(32, 8, 2, 0.6, generator=torch.Generator().manual_seed(0))
    assert len({tuple(r.tolist()) for r in many}) > 1  # drawn per image


def test_block_mask_unit_must_divide_the_grid():
    with pytest.raises(ConfigError, match="mask_unit 3"):
        block_mask(2, 8, 3, 0.6)


# ---------------------------------------------------------------- masked_l1_loss
def test_masked_l1_loss_hand_computed():
    pred = torch.zeros(2, 2, 4)
    target = torch.tensor([[[1.0, -2.0, 3.0, -4.0], [5.0, 5.0, 5.0, 5.0]],
                           [[0.5, 0.5, 0.5, 0.5], [1.0, 1.0, 1.0, 9.0]]])
    removed = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # masked patches: image 0 patch 0 (mean |.| = 2.5) and image 1 patch 1 (mean 3.0)
    assert masked_l1_loss(pred, target, removed).item() == pytest.approx((2.5 + 3.0) / 2)
    assert masked_l1_loss(pred, target, torch.tensor([[1.0, 1.0], [0.0, 0.0]])).item() == pytest.approx((2.5 + 5) / 2)
    assert masked_l1_loss(pred, target, torch.zeros(2, 2)).item() == 0.0  # nothing masked


def test_masked_l1_loss_ignores_visible_patches():
    torch.manual_seed(0)
    pred, target = torch.randn(3, 6, 12), torch.randn(3, 6, 12)
    removed = (torch.rand(3, 6) < 0.5).float()
    removed[0, 0] = 1.0
    changed = pred.clone()
    changed[removed == 0] += 100.0
    expected = masked_l1_loss(pred, target, removed).item()
    assert masked_l1_loss(changed, target, removed).item() == pytest.approx(expected)
    assert masked_l1_loss(pred.bfloat16(), target, removed).dtype == torch.float32


# ---------------------------------------------------------------- the method
def make_simmim(**options) -> SimMIM:
    torch.manual_seed(0)
    return SimMIM(ViTEncoder("vit_micro", 32, 4), SimMIMOptions(**options))


def test_forward_outputs_and_shapes():
    m = make_simmim()
    out = m(torch.randn(3, 3, 32, 32), needs=frozenset({"block.2"}), generator=torch.Generator().manual_seed(0))
    assert set(out.losses) == {"rec"}
    assert out.features["tokens"].shape == (3, 64, 128)  # every patch goes through the encoder
    assert out.features["patch_embed"].shape == (3, 64, 128)
    assert out.features["cls"].shape == (3, 128) and out.features["block.2"].shape == (3, 128)
    assert m.decoder.out_features == 4 * 4 * 3


def test_masked_patches_enter_the_encoder_as_the_mask_token():
    m = make_simmim()
    torch.manual_seed(1)
    x = torch.randn(2, 3, 32, 32)
    removed = block_mask(2, 8, 2, 0.6, generator=torch.Generator().manual_seed(5))
    out = m(x, removed=removed)
    pos = m.encoder.vit.pos_embed[0, 1:]
    masked = removed.bool()
    # the encoder input is mask token + position at masked patches, patch embedding + position elsewhere
    inputs = out.features["patch_embed"]
    torch.testing.assert_close(inputs[masked], (m.mask_token[0] + pos.expand(2, -1, -1))[masked])
    torch.testing.assert_close(inputs[~masked], (m.encoder.vit.patch_embed(x) + pos)[~masked])

    # images that differ only inside masked patches: identical encoder outputs, different losses
    patches = patchify(x, 4)
    noise = torch.randn_like(patches) * 3
    y_patches = torch.where(masked[..., None], patches + noise, patches)
    y = y_patches.view(2, 8, 8, 4, 4, 3).permute(0, 5, 1, 3, 2, 4).reshape(2, 3, 32, 32)
    assert torch.equal(patchify(y, 4)[~masked], patches[~masked])  # the round trip is right
    assert not torch.equal(y, x)
    other = m(y, removed=removed)
    for name in ("cls", "tokens", "mean"):
        torch.testing.assert_close(other.features[name], out.features[name], rtol=0, atol=1e-6)
    assert other.losses["rec"].item() != pytest.approx(out.losses["rec"].item())

    # a change in one visible patch does change the encoder output
    visible = (~masked[0]).nonzero()[0, 0].item()
    z_patches = patches.clone()
    z_patches[0, visible] += 1.0
    z = z_patches.view(2, 8, 8, 4, 4, 3).permute(0, 5, 1, 3, 2, 4).reshape(2, 3, 32, 32)
    assert not torch.allclose(m(z, removed=removed).features["cls"][0], out.features["cls"][0])


def test_loss_is_the_masked_l1_of_the_linear_decoder_output():
    m = make_simmim()
    x = torch.randn(2, 3, 32, 32)
    removed = block_mask(2, 8, 2, 0.6, generator=torch.Generator().manual_seed(2))
    out = m(x, removed=removed)
    expected = masked_l1_loss(m.decoder(out.features["tokens"]), patchify(x, 4), removed)
    assert out.losses["rec"].item() == pytest.approx(expected.item(), rel=1e-6)
    # the same generator seed draws the same mask
    a = m(x, generator=torch.Generator().manual_seed(9)).losses["rec"]
    b = m(x, generator=torch.Generator().manual_seed(9)).losses["rec"]
    assert a.item() == b.item()


def test_short_training_lowers_the_loss():
    m = make_simmim()
    g = torch.Generator().manual_seed(0)
    # one colour per image plus a little noise: masked pixels are predictable from the visible ones
    x = torch.randn(4, 3, 1, 1, generator=g) + 0.1 * torch.randn(4, 3, 32, 32, generator=g)
    removed = block_mask(4, 8, 2, 0.6, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    first = m(x, removed=removed).losses["rec"].item()
    for _ in range(30):
        opt.zero_grad()
        m(x, removed=removed).losses["rec"].backward()
        opt.step()
    assert m.mask_token.grad is not None and m.mask_token.grad.abs().sum() > 0
    assert m(x, removed=removed).losses["rec"].item() < 0.5 * first


# ---------------------------------------------------------------- recipes
TINY = ["data.name=synthetic", "data.subset=64", "optim.batch_size=32", "train.epochs=1", "train.device=cpu",
        "train.progress=false", "train.log_every=1", "train.monitor_every=1"]


def test_simmim_recipes_load():
    plain = load_config("digits/simmim", ["data.name=synthetic"])
    assert plain.method.name == "simmim"
    assert (plain.method.options.mask_ratio, plain.method.options.mask_unit) == (0.6, 2)
    assert plain.regularizers == [] and [r.name for r in plain.monitor] == ["uniformity"]
    u = load_config("digits/u-simmim", ["data.name=synthetic"])
    assert [(r.name, r.weight, r.options.feature) for r in u.regularizers] == [("uniformity", 0.01, "cls")]


def test_u_simmim_trains_with_its_regularizer(tmp_path):
    run = pretrain(load_config("digits/u-simmim", TINY), tmp_path / "run")
    assert run.steps == 2
    train = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "train"]
    for rec in train:
        assert {"rec", "reg/uniformity", "weight/uniformity", "probe/ce"} <= set(rec)
        assert rec["loss"] == pytest.approx(rec["rec"] + 0.01 * rec["reg/uniformity"], rel=1e-5)
        assert 0 < rec["rec"] < 10


# ---------------------------------------------------------------- MI-SimMIM
def test_orthogonal_block_masks_have_disjoint_visible_blocks():
    from mimreg.methods.simmim import orthogonal_block_masks

    masks = orthogonal_block_masks(3, 8, 2, 0.6, 2, generator=torch.Generator().manual_seed(0))
    assert masks.shape == (6, 64)
    visible = (masks == 0).view(2, 3, 8, 8)
    assert not (visible[0] & visible[1]).any()  # the two views of an image share no visible patch
    assert visible.sum(dim=(2, 3)).tolist() == [[24, 24, 24], [24, 24, 24]]  # 6 of 16 blocks each
    # whole 2x2 blocks
    blocks = visible.view(2, 3, 4, 2, 4, 2)
    assert torch.equal(blocks.all(dim=(3, 5)), blocks.any(dim=(3, 5)))
    with pytest.raises(ConfigError, match="num_masks"):
        orthogonal_block_masks(1, 8, 2, 0.6, 3)


def test_mi_simmim_views_and_visible_features():
    m = make_simmim(num_masks=2)
    needs = frozenset({"visible_tokens", "visible_patch_embed"})
    out = m(torch.randn(3, 3, 32, 32), needs=needs, generator=torch.Generator().manual_seed(0))
    assert out.features["cls"].shape == (6, 128)  # view-major: 2 views x 3 images
    assert out.features["visible_tokens"].shape == (6, 24, 128)
    assert out.features["visible_patch_embed"].shape == (6, 24, 128)


def test_masked_l1_loss_gradcheck_float64_and_fp32_under_bf16():
    g = torch.Generator().manual_seed(8)
    pred = torch.randn(2, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randn(2, 3, 4, generator=g, dtype=torch.float64)
    removed = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda p: masked_l1_loss(p, target, removed), (pred,))
    assert masked_l1_loss(pred.detach().bfloat16(), target.bfloat16(), removed).dtype == torch.float32
