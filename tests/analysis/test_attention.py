"""Attention maps read from timm's Attention: they are the matrix its forward applies."""

import numpy as np
import pytest
import torch

from mimreg.analysis.attention import cls_attention, heat_overlay, last_block_attention, plot_attention
from mimreg.analysis.inputs import Images
from mimreg.models import ViTEncoder

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def encoder_and_images():
    torch.manual_seed(0)
    encoder = ViTEncoder("vit_micro", 32, 4).double().eval()
    with torch.no_grad():  # away from init, so heads differ and attention is far from uniform
        for p in encoder.vit.blocks[-1].attn.parameters():
            p.mul_(4)
    return encoder, torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def test_rows_are_distributions(encoder_and_images):
    encoder, x = encoder_and_images
    attn = last_block_attention(encoder, x)
    assert attn.shape == (3, 4, 65, 65)
    assert (attn >= 0).all()
    torch.testing.assert_close(attn.sum(-1), torch.ones(3, 4, 65, dtype=torch.float64), rtol=0, atol=1e-12)
    assert attn[:, :, 0].std(-1).min() > 1e-4  # not uniform: the test below can tell matrices apart


def test_the_matrix_is_the_one_timms_attention_applies(encoder_and_images):
    """attn @ v, merged over heads and projected, equals the output of timm's Attention module
    (which may run a fused kernel that never forms the matrix)."""
    encoder, x = encoder_and_images
    module = encoder.vit.blocks[-1].attn
    seen = {}
    hooks = [module.register_forward_hook(lambda m, args, out: seen.update(out=out)),
             module.qkv.register_forward_hook(lambda m, args, out: seen.update(qkv=out))]
    with torch.no_grad():
        encoder.forward_masked(x, None)
    for h in hooks:
        h.remove()
    attn = last_block_attention(encoder, x)
    b, n, _ = seen["qkv"].shape
    v = seen["qkv"].reshape(b, n, 3, module.num_heads, module.head_dim)[:, :, 2].transpose(1, 2)
    merged = (attn @ v).transpose(1, 2).reshape(b, n, -1)
    torch.testing.assert_close(module.proj(module.norm(merged)), seen["out"], rtol=0, atol=1e-10)


def test_direct_computation_from_the_block_input(encoder_and_images):
    encoder, x = encoder_and_images
    block = encoder.vit.blocks[-1]
    inputs = {}
    hook = block.register_forward_hook(lambda m, args, out: inputs.update(x=args[0]))
    with torch.no_grad():
        encoder.forward_masked(x, None)
    hook.remove()
    h = block.norm1(inputs["x"])
    d = encoder.embed_dim
    w, bias = block.attn.qkv.weight, block.attn.qkv.bias
    q = (h @ w[:d].T + bias[:d]).unflatten(-1, (4, d // 4)).transpose(1, 2)
    k = (h @ w[d:2 * d].T + bias[d:2 * d]).unflatten(-1, (4, d // 4)).transpose(1, 2)
    direct = torch.softmax(q @ k.transpose(-1, -2) / (d // 4) ** 0.5, dim=-1)
    torch.testing.assert_close(last_block_attention(encoder, x), direct, rtol=0, atol=1e-12)
    maps = cls_attention(encoder, x)
    assert maps.shape == (3, 4, 8, 8)
    torch.testing.assert_close(maps.flatten(2), direct[:, :, 0, 1:], rtol=0, atol=1e-12)


def test_overlay_keeps_each_patch_one_colour_and_the_picture_writes(encoder_and_images, tmp_path):
    heat = np.arange(64, dtype=float).reshape(8, 8)
    overlay = heat_overlay(np.full((32, 32, 3), 0.5), heat)
    assert overlay.shape == (32, 32, 3)
    blocks = overlay.reshape(8, 4, 8, 4, 3)
    assert np.allclose(blocks, blocks[:, :1, :, :1])  # uniform within every 4x4 patch
    assert not np.allclose(overlay[0, 0], overlay[-1, -1])
    encoder, x = encoder_and_images
    shown = Images(x.float(), torch.zeros(3, dtype=torch.long), torch.zeros(3), torch.ones(3), ["a"])
    assert plot_attention(encoder.float(), shown, tmp_path / "a.png").stat().st_size > 1000
    encoder.double()
