import numpy as np
import pytest
import torch

from mimreg.errors import ConfigError
from mimreg.models import MAEDecoder, ViTEncoder, patchify, random_mask, unpatchify
from mimreg.models.pos_embed import sincos_2d


def mae_numpy_pos_embed(dim, grid_size):
    """MAE's util/pos_embed.py formula, written out in numpy for comparison."""
    grid = np.meshgrid(np.arange(grid_size, dtype=np.float64), np.arange(grid_size, dtype=np.float64))
    grid = np.stack(grid, axis=0).reshape(2, 1, grid_size, grid_size)

    def one_d(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    emb = np.concatenate([one_d(dim // 2, grid[0]), one_d(dim // 2, grid[1])], axis=1)
    return np.concatenate([np.zeros([1, dim]), emb], axis=0)


def test_pos_embed_matches_mae_formula():
    ours = sincos_2d(16, 4).numpy()
    assert np.allclose(ours, mae_numpy_pos_embed(16, 4), atol=1e-6)
    assert np.all(ours[0] == 0)  # cls slot


def test_encoder_pos_embed_is_fixed_and_timm_named():
    enc = ViTEncoder("vit_micro", 32, 4)
    assert not enc.vit.pos_embed.requires_grad
    assert torch.allclose(enc.vit.pos_embed[0], sincos_2d(128, 8))
    assert enc.embed_dim == 128 and enc.depth == 6 and enc.num_heads == 4 and enc.num_patches == 64


def test_masking_keeps_the_right_count_and_inverts():
    noise = torch.rand(3, 64)
    mask = random_mask(noise, 0.75)
    assert mask.keep_ids.shape == (3, 16)
    assert torch.equal(mask.removed.sum(1), torch.full((3,), 48.0))
    # kept patches are the ones with the smallest noise, and are marked 0
    smallest = noise.argsort(1)[:, :16]
    assert torch.equal(mask.keep_ids, smallest)
    assert torch.all(mask.removed.gather(1, mask.keep_ids) == 0)
    shuffle = noise.argsort(1)
    assert torch.equal(shuffle.gather(1, mask.restore_ids), torch.arange(64).expand(3, -1))


def test_patchify_layout_is_channel_last_and_invertible():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    p = patchify(x, 4)
    assert p.shape == (2, 4, 48)
    # first patch, first pixel: the three channel values, channel fastest
    assert torch.equal(p[0, 0, :3], x[0, :, 0, 0])
    assert torch.equal(unpatchify(p, 4), x)


def test_masked_forward_with_all_patches_equals_unmasked():
    torch.manual_seed(0)
    enc = ViTEncoder("vit_micro", 32, 4).double().eval()  # float64: the same function, not fp32's rounding
    x = torch.randn(2, 3, 32, 32).double()
    full = enc.forward_masked(x, None)
    keep_all = torch.arange(64).expand(2, -1)
    same = enc.forward_masked(x, keep_all)
    assert torch.allclose(full.cls, same.cls, rtol=0, atol=1e-10)
    timm_out = enc.vit.forward_features(x)
    assert torch.allclose(timm_out[:, 0], full.cls, rtol=0, atol=1e-10)
    assert torch.allclose(timm_out[:, 1:], full.tokens, rtol=0, atol=1e-10)


def test_pooled_blocks_are_pre_norm_means_over_visible_patches():
    torch.manual_seed(0)
    enc = ViTEncoder("vit_micro", 32, 4).double().eval()  # float64: the same function, not fp32's rounding
    x = torch.randn(2, 3, 32, 32).double()
    mask = random_mask(torch.rand(2, 64), 0.75)
    out = enc.forward_masked(x, mask.keep_ids, pooled_blocks=[4, 5])
    # recompute by hand with timm blocks
    tokens = enc.embed_patches(x).gather(1, mask.keep_ids[..., None].expand(-1, -1, 128))
    h = torch.cat([(enc.vit.cls_token + enc.vit.pos_embed[:, :1]).expand(2, -1, -1), tokens], 1)
    for block in enc.vit.blocks:
        h = block(h)
    assert torch.allclose(out.pooled_blocks[5], h[:, 1:].mean(1), rtol=0, atol=1e-10)
    assert torch.allclose(out.cls, enc.vit.norm(h)[:, 0], rtol=0, atol=1e-10)
    assert out.tokens.shape == (2, 16, 128)


def test_decoder_output_shape_and_bad_arch():
    dec = MAEDecoder(128, 8, 4, dim=32, depth=1, num_heads=2)
    mask = random_mask(torch.rand(2, 64), 0.75)
    assert dec(torch.randn(2, 17, 128), mask.restore_ids).shape == (2, 64, 48)
    with pytest.raises(ConfigError, match="unknown model.arch"):
        ViTEncoder("vit_huge_typo")
    with pytest.raises(ConfigError, match="multiple"):
        ViTEncoder("vit_micro", 30, 4)
