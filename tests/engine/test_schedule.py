"""Learning-rate rule, warmup + cosine schedule, and weight-decay parameter groups."""

from __future__ import annotations

import math

import pytest
import torch

from mimreg.config import OptimConfig
from mimreg.engine.build import build_trainee
from mimreg.engine.schedule import build_optimizer, learning_rate, lr_at, param_groups, set_lr

pytestmark = pytest.mark.usefixtures("single_thread")


def test_learning_rate_scales_blr_with_the_effective_batch():
    assert learning_rate(OptimConfig(blr=1.5e-4, batch_size=256), world=1) == pytest.approx(1.5e-4)
    assert learning_rate(OptimConfig(blr=1.5e-4, batch_size=128), world=1) == pytest.approx(0.75e-4)
    assert learning_rate(OptimConfig(blr=1e-3, batch_size=64, accum_steps=2), world=1) == pytest.approx(5e-4)
    assert learning_rate(OptimConfig(blr=1e-3, batch_size=64, accum_steps=2), world=4) == pytest.approx(2e-3)
    assert learning_rate(OptimConfig(blr=1e-3, batch_size=32, accum_steps=3), world=2) == pytest.approx(
        1e-3 * 32 * 3 * 2 / 256)


def test_absolute_lr_wins_over_blr():
    assert learning_rate(OptimConfig(blr=1.0, lr=2e-3, batch_size=1024, accum_steps=4), world=8) == 2e-3


def test_warmup_is_linear_from_zero():
    kw = dict(base_lr=1e-3, min_lr=1e-5, warmup_steps=10, total_steps=100)
    assert lr_at(0, **kw) == 0.0
    assert lr_at(1, **kw) == pytest.approx(1e-4)
    assert lr_at(5, **kw) == pytest.approx(5e-4)
    assert lr_at(9, **kw) == pytest.approx(9e-4)
    assert lr_at(10, **kw) == pytest.approx(1e-3)  # end of warmup: the peak


def test_cosine_decay_to_min_lr():
    kw = dict(base_lr=1e-3, min_lr=1e-5, warmup_steps=10, total_steps=110)
    assert lr_at(60, **kw) == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5)  # halfway through the decay
    assert lr_at(35, **kw) == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + math.cos(math.pi * 0.25)))
    assert lr_at(110, **kw) == pytest.approx(1e-5)
    assert lr_at(500, **kw) == pytest.approx(1e-5)  # clamped after the end
    values = [lr_at(s, **kw) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # monotone after warmup


def test_no_warmup_starts_at_the_peak():
    assert lr_at(0, base_lr=1e-3, min_lr=0.0, warmup_steps=0, total_steps=10) == pytest.approx(1e-3)
    assert lr_at(10, base_lr=1e-3, min_lr=0.0, warmup_steps=0, total_steps=10) == pytest.approx(0.0)
    # a one-step run does not divide by zero
    assert lr_at(0, base_lr=1e-3, min_lr=0.0, warmup_steps=1, total_steps=1) == 0.0
    assert math.isfinite(lr_at(1, base_lr=1e-3, min_lr=0.0, warmup_steps=1, total_steps=1))


def test_param_groups_split_decay_from_no_decay(tiny_config):
    trainee = build_trainee(tiny_config("mu-mae"), num_classes=10)
    groups = param_groups(trainee, weight_decay=0.05)
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0]
    decay = {id(p) for p in groups[0]["params"]}
    no_decay = {id(p) for p in groups[1]["params"]}
    assert not decay & no_decay
    names = {id(p): n for n, p in trainee.named_parameters()}
    trainable = {id(p) for p in trainee.parameters() if p.requires_grad}
    assert decay | no_decay == trainable  # every trainable parameter once; the frozen pos_embed none
    decay_names = {names[i] for i in decay}
    no_decay_names = {names[i] for i in no_decay}
    for name in ("method.encoder.vit.cls_token", "method.decoder.mask_token", "method.encoder.vit.norm.weight",
                 "method.encoder.vit.norm.bias", "method.encoder.vit.blocks.0.attn.qkv.bias",
                 "method.encoder.vit.blocks.0.norm1.weight", "method.encoder.vit.patch_embed.proj.bias",
                 "method.decoder.predict.bias", "probe.bias"):
        assert name in no_decay_names, name
    for name in ("method.encoder.vit.blocks.0.attn.qkv.weight", "method.encoder.vit.blocks.5.mlp.fc2.weight",
                 "method.encoder.vit.patch_embed.proj.weight", "method.decoder.embed.weight",
                 "method.decoder.predict.weight", "probe.weight"):
        assert name in decay_names, name
    assert all(p.ndim >= 2 for i, p in ((id(p), p) for p in trainee.parameters()) if i in decay)
    assert "method.encoder.vit.pos_embed" not in decay_names | no_decay_names


def test_frozen_parameters_are_left_out():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    model[0].weight.requires_grad_(False)
    groups = param_groups(model, 0.1)
    assert [len(g["params"]) for g in groups] == [0, 3]


def test_build_optimizer_and_set_lr():
    model = torch.nn.Linear(3, 4)
    opt = build_optimizer(param_groups(model, 0.1), OptimConfig(weight_decay=0.1, betas=(0.8, 0.9)))
    assert isinstance(opt, torch.optim.AdamW)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    assert opt.param_groups[0]["betas"] == (0.8, 0.9)
    set_lr(opt, 0.25)
    assert [g["lr"] for g in opt.param_groups] == [0.25, 0.25]
