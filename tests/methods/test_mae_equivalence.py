"""mimreg's MAE computes what the paper's code computes: the loss and every gradient on a fixed batch
with fixed masks equal the straightforward implementation (argsort masking, take_along_dim
unshuffle, norm-pix loss over masked patches), written out here with the same weights, and a value
frozen before the step was made faster. Weights, images and masks come from formulas, so nothing
depends on torch's initialisation or on one CPU's rounding."""

import math

import pytest
import torch

from mimreg.methods import MAE
from mimreg.methods.mae import MAEOptions
from mimreg.models import ViTEncoder

# the float64 loss of `fixed_case` computed by the step before it was made faster (mimreg 2c2d7d8)
FROZEN_LOSS = 1.0531366036673673


def deterministic_(module: torch.nn.Module) -> None:
    """Every trained parameter set from a formula (norm weights near 1, the rest small)."""
    with torch.no_grad():
        for k, (name, p) in enumerate(module.named_parameters()):
            if not p.requires_grad:
                continue
            wave = torch.sin(torch.arange(p.numel(), dtype=torch.float64) * 0.731 + k).reshape(p.shape)
            p.copy_(1.0 + 0.1 * wave if "norm" in name and name.endswith("weight") else 0.05 * wave)


def fixed_case(dtype=torch.float64):
    """(MAE with formula weights, 4 images, mask noise)."""
    mae = MAE(ViTEncoder("vit_micro", 32, 4), MAEOptions(decoder_dim=32, decoder_depth=2, decoder_heads=2))
    mae = mae.to(dtype)
    deterministic_(mae)
    grid = torch.arange(4 * 3 * 32 * 32, dtype=torch.float64).reshape(4, 3, 32, 32)
    images = torch.sin(grid * 0.0137) + 0.3 * torch.cos(grid * 0.291)
    noise = (torch.sin(torch.arange(4 * 64, dtype=torch.float64) * 12.9898) * 43758.5453).frac().abs().reshape(4, 64)
    return mae, images.to(dtype), noise.to(dtype)


def straightforward_loss(mae: MAE, images: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """MAE as the paper's models_mae.py writes it, on mae's own modules."""
    vit, dec = mae.encoder.vit, mae.decoder
    batch, length = noise.shape
    keep = int(length * (1 - mae.options.mask_ratio))
    shuffle = torch.argsort(noise, dim=1)
    restore = torch.argsort(shuffle, dim=1)
    x = vit.patch_embed(images) + vit.pos_embed[:, 1:]
    x = torch.take_along_dim(x, shuffle[:, :keep, None], dim=1)
    x = torch.cat([(vit.cls_token + vit.pos_embed[:, :1]).expand(batch, -1, -1), x], dim=1)
    for block in vit.blocks:
        x = block(x)
    x = dec.embed(vit.norm(x))
    tokens = torch.cat([x[:, 1:], dec.mask_token.expand(batch, length - keep, -1)], dim=1)
    tokens = torch.take_along_dim(tokens, restore[..., None], dim=1)
    x = torch.cat([x[:, :1], tokens], dim=1) + dec.pos_embed
    for block in dec.blocks:
        x = block(x)
    pred = dec.predict(dec.norm(x))[:, 1:]
    p = mae.encoder.patch_size
    target = images.reshape(batch, 3, 8, p, 8, p).permute(0, 2, 4, 3, 5, 1).reshape(batch, length, -1)
    target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
    mask = torch.ones(batch, length, dtype=images.dtype)
    mask[:, :keep] = 0
    mask = torch.take_along_dim(mask, restore, dim=1)
    return (((pred - target) ** 2).mean(-1) * mask).sum() / mask.sum()


def gradients(mae: MAE, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    mae.zero_grad(set_to_none=True)
    loss.backward()
    return {name: p.grad.clone() for name, p in mae.named_parameters() if p.grad is not None}


def test_loss_and_gradients_equal_the_straightforward_mae_in_float64():
    mae, images, noise = fixed_case()
    ours = mae(images, noise=noise).losses["rec"]
    reference = straightforward_loss(mae, images, noise)
    assert ours.item() == pytest.approx(reference.item(), rel=1e-12)
    ours_grads, reference_grads = gradients(mae, ours), gradients(mae, straightforward_loss(mae, images, noise))
    assert set(ours_grads) == set(reference_grads) and len(ours_grads) > 20
    for name, grad in reference_grads.items():
        assert torch.allclose(ours_grads[name], grad, rtol=1e-9, atol=1e-12), name


def test_loss_on_the_fixed_batch_is_the_frozen_value_and_fp32_within_1e5():
    mae, images, noise = fixed_case()
    assert mae(images, noise=noise).losses["rec"].item() == pytest.approx(FROZEN_LOSS, rel=1e-9)
    mae32, images32, noise32 = fixed_case(torch.float32)
    loss32 = mae32(images32, noise=noise32).losses["rec"].item()
    assert math.isclose(loss32, FROZEN_LOSS, rel_tol=1e-5)


def test_predict_gives_every_patch_and_the_loss_reads_the_masked_ones():
    mae, images, noise = fixed_case()
    p = mae.predict(images, noise=noise)
    assert p.pred.shape == p.target.shape == (4, 64, 48) and p.removed.sum().item() == 4 * 48
    reference = straightforward_loss(mae, images, noise)
    from mimreg.methods import reconstruction_loss

    assert reconstruction_loss(p.pred, p.target, p.removed, p.norm_pix).item() == pytest.approx(reference.item(),
                                                                                                 rel=1e-12)
