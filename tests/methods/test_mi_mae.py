"""MI-MAE (spec §5): K orthogonal masks, MAE on K views per image, and the mi-mae recipe."""

from __future__ import annotations

import pytest
import torch

from mimreg.config import load_config
from mimreg.engine.loop import pretrain
from mimreg.engine.metrics import read_metrics
from mimreg.errors import ConfigError
from mimreg.methods import MAE, reconstruction_loss
from mimreg.methods.mae import MAEOptions
from mimreg.models import ViTEncoder, orthogonal_masks, patchify, random_mask

pytestmark = pytest.mark.usefixtures("single_thread")


# ---------------------------------------------------------------- orthogonal_masks
def visible_sets(mask) -> list[set[int]]:
    return [set(row.tolist()) for row in mask.keep_ids]


def test_four_orthogonal_masks_partition_the_patches():
    noise = torch.rand(3, 64, generator=torch.Generator().manual_seed(0))
    masks = orthogonal_masks(noise, 4, 0.75)
    assert len(masks) == 4
    for m in masks:
        assert m.keep_ids.shape == (3, 16) and m.restore_ids.shape == (3, 64)
        assert (m.removed.sum(dim=1) == 48).all()
        # removed is 0 exactly at keep_ids; restore_ids inverts the (keep first) shuffle
        assert (m.removed.gather(1, m.keep_ids) == 0).all()
        assert (torch.sort(m.restore_ids, dim=1).values == torch.arange(64)).all()
    for i in range(3):
        sets = [visible_sets(m)[i] for m in masks]
        assert all(len(s) == 16 for s in sets)
        assert set().union(*sets) == set(range(64))  # they cover every patch ...
        assert sum(len(s) for s in sets) == 64  # ... and are pairwise disjoint
        assert sum(m.removed[i] for m in masks).tolist() == [3.0] * 64  # each patch hidden in 3 of 4 views


def test_first_orthogonal_mask_is_the_plain_random_mask_of_the_noise():
    noise = torch.rand(2, 64, generator=torch.Generator().manual_seed(1))
    first = orthogonal_masks(noise, 4, 0.75)[0]
    plain = random_mask(noise, 0.75)
    assert torch.equal(first.keep_ids, plain.keep_ids)
    assert torch.equal(first.removed, plain.removed)
    # the chunks follow the noise order: view k keeps the patches of rank 16k .. 16k + 15
    order = noise.argsort(dim=1)
    for k, m in enumerate(orthogonal_masks(noise, 4, 0.75)):
        assert [set(r) for r in m.keep_ids.tolist()] == [set(r) for r in order[:, 16 * k:16 * (k + 1)].tolist()]


def test_fewer_masks_are_disjoint_without_covering():
    masks = orthogonal_masks(torch.rand(2, 64), 2, 0.75)
    for i in range(2):
        a, b = (visible_sets(m)[i] for m in masks)
        assert not a & b and len(a | b) == 32


@pytest.mark.parametrize("num_masks, ratio", [(5, 0.75), (4, 0.7), (2, 0.4)])
def test_too_many_disjoint_masks_is_an_error(num_masks, ratio):
    with pytest.raises(ValueError, match="disjoint masks"):
        orthogonal_masks(torch.rand(1, 64), num_masks, ratio)


# ---------------------------------------------------------------- MAE with K masks
def make_mae(**options) -> MAE:
    torch.manual_seed(0)
    return MAE(ViTEncoder("vit_micro", 32, 4), MAEOptions(decoder_dim=32, decoder_depth=1, decoder_heads=2, **options))


def per_view_losses(mae: MAE, images: torch.Tensor, masks) -> list[torch.Tensor]:
    losses = []
    for m in masks:
        out = mae.encoder.forward_masked(images, m.keep_ids)
        pred = mae.decoder(torch.cat([out.cls[:, None], out.tokens], dim=1), m.restore_ids)
        losses.append(reconstruction_loss(pred, patchify(images, 4), m.removed))
    return losses


def test_orthogonal_views_are_view_major_and_rec_is_the_mean_over_views():
    mae = make_mae(num_masks=4).double()  # float64: the same function, not fp32's rounding
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0)).double()
    noise = torch.rand(3, 64, generator=torch.Generator().manual_seed(1))
    out = mae(x, noise=noise)
    assert out.features["cls"].shape == (12, 128)
    assert out.features["tokens"].shape == (12, 16, 128) and out.features["patch_embed"].shape == (12, 16, 128)
    masks = orthogonal_masks(noise, 4, 0.75)
    with torch.no_grad():
        for v, m in enumerate(masks):  # row v * B + i is image i under mask v
            cls = mae.encoder.forward_masked(x, m.keep_ids).cls
            torch.testing.assert_close(out.features["cls"][3 * v:3 * (v + 1)], cls, rtol=1e-10, atol=1e-10)
        expected = torch.stack(per_view_losses(mae, x, masks)).mean()
    assert out.losses["rec"].item() == pytest.approx(expected.item(), rel=1e-10)
    # one pass per view of the same image differs (the views see different patches)
    assert not torch.allclose(out.features["cls"][0], out.features["cls"][3])


def test_generator_draws_one_noise_row_per_image_in_orthogonal_mode():
    mae = make_mae(num_masks=4)
    x = torch.randn(2, 3, 32, 32)
    a = mae(x, generator=torch.Generator().manual_seed(4))
    noise = torch.rand(2, 64, generator=torch.Generator().manual_seed(4))
    b = mae(x, noise=noise)
    assert a.losses["rec"].item() == pytest.approx(b.losses["rec"].item(), rel=1e-6)


def test_independent_masks_differ_and_overlap():
    mae = make_mae(num_masks=4, mask_mode="independent")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    noise = torch.rand(8, 64, generator=torch.Generator().manual_seed(2))  # K * B rows, view-major
    out = mae(x, noise=noise)
    assert out.features["cls"].shape == (8, 128)
    mask = random_mask(noise, 0.75)
    views = [type(mask)(*(getattr(mask, f)[2 * v:2 * (v + 1)] for f in ("keep_ids", "restore_ids", "removed")))
             for v in range(4)]
    with torch.no_grad():
        expected = torch.stack(per_view_losses(mae, x, views)).mean()
    assert out.losses["rec"].item() == pytest.approx(expected.item(), rel=1e-5)
    for i in range(2):
        sets = [visible_sets(m)[i] for m in views]
        assert len({frozenset(s) for s in sets}) == 4  # different masks
        assert any(sets[a] & sets[b] for a in range(4) for b in range(a + 1, 4))  # that overlap
        assert len(set().union(*sets)) < 64
    # drawn from the generator: K * B noise rows
    a = mae(x, generator=torch.Generator().manual_seed(5))
    b = mae(x, noise=torch.rand(8, 64, generator=torch.Generator().manual_seed(5)))
    assert a.losses["rec"].item() == pytest.approx(b.losses["rec"].item(), rel=1e-6)


def test_one_mask_is_plain_mae():
    mae = make_mae()
    x = torch.randn(2, 3, 32, 32)
    noise = torch.rand(2, 64)
    out = mae(x, noise=noise)
    assert out.features["cls"].shape == (2, 128)
    with torch.no_grad():
        expected = per_view_losses(mae, x, [random_mask(noise, 0.75)])[0]
    assert out.losses["rec"].item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("options", [{"num_masks": 0}, {"mask_mode": "random"}])
def test_bad_mask_options_are_config_errors(options):
    with pytest.raises(ConfigError, match="num_masks"):
        make_mae(**options)


def test_orthogonal_mode_with_too_many_masks_fails_clearly():
    mae = make_mae(num_masks=5)
    with pytest.raises(ValueError, match="lower num_masks"):
        mae(torch.randn(1, 3, 32, 32))


# ---------------------------------------------------------------- the mi-mae recipe
def test_mi_mae_recipe_defaults():
    cfg = load_config("digits/mi-mae", ["data.name=synthetic"])
    o = cfg.method.options
    assert (cfg.method.name, o.num_masks, o.mask_mode) == ("mae", 4, "orthogonal")
    assert (o.mask_ratio, o.norm_pix_loss) == (0.75, True)
    regs = {r.name: r for r in cfg.regularizers}
    assert set(regs) == {"infonce_masks", "club"}
    assert (regs["infonce_masks"].weight, regs["infonce_masks"].options.num_views) == (1.0, 4)
    assert regs["infonce_masks"].options.temperature == 0.1 and regs["infonce_masks"].options.feature == "cls"
    assert regs["club"].weight == 10.0
    assert (regs["club"].options.input_feature, regs["club"].options.output_feature) == ("patch_embed", "tokens")
    assert regs["infonce_masks"].start_epoch == 2 and regs["club"].start_epoch == 2  # the digits preset's window
    assert regs["club"].gate_rec_loss is None


def test_mi_mae_recipe_trains_with_both_regularizers(tmp_path):
    cfg = load_config("digits/mi-mae", [
        "data.name=synthetic", "data.subset=64", "optim.batch_size=32", "train.epochs=1", "train.device=cpu",
        "train.progress=false", "train.log_every=1", "train.monitor_every=1", "method.decoder_dim=32",
        "method.decoder_depth=1", "method.decoder_heads=2", "regularizers.infonce_masks.start_epoch=0",
        "regularizers.club.start_epoch=0", "regularizers.club.hidden_dim=32"])
    run = pretrain(cfg, tmp_path / "run")
    assert run.steps == 2
    train = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "train"]
    assert len(train) == 2
    for rec in train:
        assert {"rec", "reg/infonce_masks", "reg/club", "aux/club", "probe/ce"} <= set(rec)
        assert (rec["weight/infonce_masks"], rec["weight/club"]) == (1.0, 10.0)
        # the encoder's objective: CLUB's own likelihood (aux) and the probe train apart from it
        objective = rec["rec"] + rec["reg/infonce_masks"] + 10 * rec["reg/club"]
        assert rec["loss"] == pytest.approx(objective, rel=1e-4)
        assert rec["reg/infonce_masks"] > 0
