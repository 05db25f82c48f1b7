"""The torch device a user names: `auto` (the GPU when there is one), cpu, cuda, cuda:N, mps."""

from __future__ import annotations

import os

import torch

from mimreg.errors import ConfigError


def resolve_device(name: str | torch.device = "auto", key: str = "--device") -> torch.device:
    """The device `name` stands for; a CUDA name without CUDA, or an unknown name, is an error
    naming `key` (the option or config key it came from)."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"{key} is {name!r} but no CUDA device is available; use {key} cpu (or auto)")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"{key}: unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None


def local_device(device: torch.device, distributed: bool) -> torch.device:
    """Under torchrun on CUDA: this process's GPU (cuda:LOCAL_RANK), made current; else `device`."""
    if not (distributed and device.type == "cuda"):
        return device
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    torch.cuda.set_device(device)
    return device
