"""Losses reduce in fp32: a decorator that turns autocast off and lifts half-precision inputs."""

from __future__ import annotations

import functools

import torch


def _lift(x):
    if torch.is_tensor(x) and x.is_floating_point() and x.dtype not in (torch.float32, torch.float64):
        return x.float()
    return x


def fp32_loss(fn):
    """Run `fn` with autocast disabled and fp16/bf16 tensor arguments cast to fp32 (fp64 stays fp64),
    so that its matmuls and reductions are fp32 even inside a bf16/fp16 training step."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        device = next((a.device.type for a in (*args, *kwargs.values()) if torch.is_tensor(a)), "cpu")
        with torch.autocast(device_type=device, enabled=False):
            return fn(*map(_lift, args), **{k: _lift(v) for k, v in kwargs.items()})

    return wrapper
