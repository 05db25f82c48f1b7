"""Helpers the test modules import (tests/ is on pytest's pythonpath)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

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



def assert_close_at_scale(got: torch.Tensor, expected: torch.Tensor, tol: float, scale: float | None = None,
                          msg: str = "") -> None:
    """|got - expected| <= tol * (|expected| + scale) entrywise, with `scale` the largest entry of
    `expected` unless given. The absolute part is tied to the size of the whole quantity, not to
    each entry: an entry whose true value is zero holds only rounding noise, whose size depends on
    the CPU's kernels and on the summation order."""
    scale = expected.abs().max().item() if scale is None else scale
    torch.testing.assert_close(got, expected, rtol=tol, atol=tol * scale, msg=lambda text: f"{msg} {text}")


# Per-entry tolerance of a comparison of two computations of the same gradient, by dtype: float64
# where the question is exactness (rounding ~1e-16 per operation), float32 where a part must stay so.
GRADIENT_TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4}


def assert_same_gradients(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], label: str = "") -> None:
    """The named gradients `got` equal `expected` (same names) at the scale of the WHOLE expected
    gradient (its largest entry), to GRADIENT_TOLERANCE of each tensor's dtype: a tensor whose true
    gradient is zero (a bias that a BatchNorm or a centring cancels) is then compared with the
    gradient's size, not with its own noise."""
    assert set(got) == set(expected), (label, sorted(set(got) ^ set(expected)))
    scale = max(g.abs().max().item() for g in expected.values())
    for name, grad in expected.items():
        assert_close_at_scale(got[name], grad, GRADIENT_TOLERANCE[grad.dtype], scale, msg=f"{label} {name}")


def linear_result_file(run: Path, pool: str = "cls") -> Path:
    """The file of the run's default linear probe on `pool` (as `mimreg eval linear` names it)."""
    from mimreg.eval.results import load_results

    [path] = [Path(r["file"]) for r in load_results(run)
              if r["protocol"] == "linear" and r["variant"] == "sweep" and r["pool"] == pool]
    return path


# issue 17's regularizers: one short run of a regularizer on MAE (cls) and on SimCLR (per-view emb)
TINY_JOINT_SETS = ("data.name=synthetic", "data.img_size=32", "model.arch=vit_micro", "method.proj_hidden_dim=32",
                   "method.proj_output_dim=16", "optim.batch_size=32", "train.epochs=1", "train.device=cpu",
                   "train.progress=false", "train.log_every=1")


def regularized_run(recipe: str, entry: dict, run_dir: Path, tiny_config, steps: int = 3) -> list[dict]:
    """`steps` steps of digits/<recipe> (mae: the `tiny_config` fixture's tiny MAE; a joint method: a
    small projector) with the one regularizer `entry` on 96 synthetic images; its train records."""
    import yaml

    from mimreg.config import load_config
    from mimreg.engine.loop import pretrain
    from mimreg.engine.metrics import read_metrics

    extra = ("data.subset=96", f"train.halt_after_steps={steps}")
    if recipe in ("mae", "simmim"):
        cfg = tiny_config(recipe, *extra, regularizers=[entry])
    else:
        listed = yaml.safe_dump([entry], default_flow_style=True).strip()
        cfg = load_config(f"digits/{recipe}", [*TINY_JOINT_SETS, *extra, f"regularizers={listed}"])
    pretrain(cfg, run_dir)
    return [r for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "train"]


class MeanColour(torch.nn.Module):
    """A stand-in encoder for the monitors: cls = each image's mean colour, through a dropout that
    would show train mode."""

    def __init__(self):
        super().__init__()
        self.drop = torch.nn.Dropout(0.5)

    def forward_masked(self, images, keep_ids):
        from mimreg.models import EncoderOutput

        cls = self.drop(images.mean(dim=(2, 3)))
        return EncoderOutput(cls=cls, tokens=cls[:, None])


def built_once(tmp_path_factory, name: str, build) -> Path:
    """The folder `build(folder)` fills, built once per test session: under pytest-xdist the first
    worker to ask builds it (a file lock) and the others read it, instead of each building its own."""
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        folder = tmp_path_factory.mktemp(name)
        build(folder)
        return folder
    from filelock import FileLock  # torch's own dependency

    folder = tmp_path_factory.getbasetemp().parent / f"built-once-{name}"  # the session's, shared by its workers
    with FileLock(f"{folder}.lock"):
        if not (folder / ".built").exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            (folder / ".built").touch()
    return folder


def assert_resume_is_exact(tiny_config, sets, tmp_path: Path, halt: int = 3) -> None:
    """MAE on `sets` halted after step `halt` and resumed logs every train loss of the whole run exactly
    (the sets' data: 64 images in batches of 32 for 2 epochs, 4 steps)."""
    from mimreg.engine.loop import pretrain
    from mimreg.engine.metrics import read_metrics

    def losses(run: Path) -> list[tuple[int, float]]:
        return [(r["step"], r["loss"]) for r in read_metrics(run / "metrics.jsonl") if r.get("kind") == "train"]

    whole = pretrain(tiny_config("mae", *sets), tmp_path / "whole")
    halted = pretrain(tiny_config("mae", *sets, f"train.halt_after_steps={halt}"), tmp_path / "resumed")
    resumed = pretrain(tiny_config("mae", *sets), tmp_path / "resumed", resume=True)
    assert halted.steps == halt and whole.steps == resumed.steps == 4
    assert losses(tmp_path / "resumed") == losses(tmp_path / "whole")
