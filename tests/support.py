"""Helpers the test modules import (tests/ is on pytest's pythonpath)."""

from __future__ import annotations

import torch


def normalised_std(x: torch.Tensor) -> float:
    """Mean over dimensions of the std over the batch of the L2-normalised rows (SimSiam's
    collapse measure): 0 when every row points the same way, ~1/sqrt(d) when spread evenly."""
    return torch.nn.functional.normalize(x, dim=1).std(dim=0).mean().item()


def run_summary(recipe: str, steps: int, losses: list[float], cls: torch.Tensor, **extra) -> dict:
    """What a short training run's tests check: its losses (mean of the first and last 5) and the
    spread of the evaluated cls features; printed with -s."""
    from mimreg.analysis import effective_rank

    out = {"steps": steps, "losses": losses, "first": sum(losses[:5]) / 5, "last": sum(losses[-5:]) / 5,
           "cls_std": normalised_std(cls), "cls_erank": effective_rank(cls), **extra}
    shown = ", ".join(f"{k} {v:.4f}" for k, v in out.items() if k.endswith(("std", "erank")))
    print(f"\n{recipe}: {steps} steps, loss {out['first']:.4f} -> {out['last']:.4f}; {shown} (256 test images)")
    return out
