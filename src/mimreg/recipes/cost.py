"""Training cost of a run from its config, without running it: GFLOP per pretraining image (forward +
backward), images seen, and GPU-hours at an assumed sustained throughput.

FLOPs count multiply-adds twice (the usual convention: ViT-B/16 at 224 is 35 GFLOP forward). A ViT
is counted from its dims and token counts; a ResNet by torch's FLOP counter on one image. A trained
pass costs 3x its forward (backward ~2x); an EMA target's pass is forward only. Losses, heads,
projectors and the optimizer are left out: a few percent at these sizes.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from mimreg.config import Config
from mimreg.engine.data import msn_focal_size
from mimreg.models import VIT_ARCHS, ResNetEncoder, is_vit

# ASSUMPTION (no GPU was lent to measure it): an H100 sustains 180 TFLOP/s (18% of its 989 TFLOP/s
# dense bf16 peak) on these models: ViT-B/16 MAE at ~3,000 img/s x 58.7 GFLOP, the same assumption
# as benchmarks/results/imagenet_decode.txt's cores-per-GPU estimate. Replace it by a measured value.
ASSUMED_TFLOPS = 180.0
ASSUMED_GPU = "H100"
TRAIN_PASS, FORWARD_PASS = 3.0, 1.0  # forward + backward, forward only


def vit_block_flops(tokens: int, dim: int) -> float:
    """One transformer block (mlp_ratio 4): qkv + projection + MLP (12 N D^2 MACs) and attention (2 N^2 D)."""
    return 2.0 * (12 * tokens * dim**2 + 2 * tokens**2 * dim)


def vit_encoder_flops(arch: str, img_size: int, patch: int, keep: float = 1.0) -> float:
    """Patch embedding of every patch, then the blocks on the kept patches plus the cls token."""
    dim, depth, _ = VIT_ARCHS[arch]
    patches = (img_size // patch) ** 2
    tokens = int(patches * keep) + 1
    return 2.0 * patches * 3 * patch**2 * dim + depth * vit_block_flops(tokens, dim)


def mae_decoder_flops(options, arch: str, img_size: int, patch: int) -> float:
    """MAE's decoder: embed the visible tokens, blocks on every token, predict each patch's pixels."""
    dim = VIT_ARCHS[arch][0]
    patches = (img_size // patch) ** 2
    visible = int(patches * (1 - options.mask_ratio)) + 1
    d = options.decoder_dim
    return (2.0 * visible * dim * d + options.decoder_depth * vit_block_flops(patches + 1, d)
            + 2.0 * (patches + 1) * d * 3 * patch**2)


@lru_cache(maxsize=None)
def resnet_flops(arch: str, img_size: int, stem: str) -> float:
    """Forward FLOPs of the ResNet encoder (no fc) on one image, counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    encoder = ResNetEncoder(arch, img_size=img_size, stem=stem).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        encoder.features(torch.zeros(1, 3, img_size, img_size))
    return float(counter.get_total_flops())


def encoder_flops(cfg: Config, img_size: int | None = None, keep: float = 1.0) -> float:
    size = img_size or cfg.img_size
    if is_vit(cfg.model.arch):
        return vit_encoder_flops(cfg.model.arch, size, cfg.model.patch_size, keep)
    return resnet_flops(cfg.model.arch, size, cfg.model.stem)


def gflop_per_image(cfg: Config) -> float:
    """Training GFLOP per pretraining image (all its views and masks), forward + backward."""
    method, options = cfg.method.name, cfg.method.options
    if method == "mae":  # K masked views, each encoded on its visible patches and decoded
        keep = 1 - options.mask_ratio
        one = encoder_flops(cfg, keep=keep) + mae_decoder_flops(options, cfg.model.arch, cfg.img_size,
                                                                cfg.model.patch_size)
        flops = options.num_masks * TRAIN_PASS * one
    elif method == "simmim":  # mask tokens go through the encoder: every patch, per masked view
        flops = options.num_masks * TRAIN_PASS * encoder_flops(cfg)
    elif method == "msn":  # masked anchor + focal views trained, the EMA target forward only
        focal = cfg.data.focal_views * encoder_flops(cfg, img_size=msn_focal_size(cfg))
        anchor = encoder_flops(cfg, keep=1 - options.mask_ratio)
        flops = TRAIN_PASS * (anchor + focal) + FORWARD_PASS * encoder_flops(cfg)
    elif method == "lejepa" and cfg.data.augmentation == "msn":  # 2 global views, the focal ones local
        flops = TRAIN_PASS * (2 * encoder_flops(cfg) + cfg.data.focal_views * encoder_flops(cfg, img_size=msn_focal_size(cfg)))
    else:  # joint embedding: every view trained; BYOL's EMA target sees them forward only
        views = cfg.data.num_views
        target = views * FORWARD_PASS * encoder_flops(cfg) if method == "byol" else 0.0
        flops = views * TRAIN_PASS * encoder_flops(cfg) + target
    return flops / 1e9


def gpu_hours(total_gflop: float, tflops: float = ASSUMED_TFLOPS) -> float:
    return total_gflop / (tflops * 1e3) / 3600
