"""The smoke matrix's runner: every recipe, in sequence in one interpreter (torch and timm start once),
trained 2 steps uninterrupted and again halted after step 1 and resumed, under one setting (a mode).

    python tests/smoke_worker.py OUT MODE [RECIPE ...]          # one process (default: every recipe, RECIPE@ARCH too)
    torchrun --nproc_per_node=2 tests/smoke_worker.py OUT MODE  # ddp, fsdp

Each recipe leaves OUT/<recipe>/full and OUT/<recipe>/resumed; rank 0 writes OUT/results.json with,
per recipe, its error (None when it ran), its seconds, its last loss and the largest difference of the
final weights of the two runs. A recipe that fails does not stop the others, so one run names every
broken recipe; the script exits 1 if any failed. tests/test_smoke_matrix.py runs it on the CPU,
benchmarks/device_check.sh in its mode cuda-bf16."""

from __future__ import annotations

import importlib.util
import json
import sys
import time
import traceback
from pathlib import Path


def _load_conftest():
    """tests/conftest.py by its path: inside pytest the module name `conftest` may be another
    folder's (pytest imports each folder's conftest under that one name)."""
    spec = importlib.util.spec_from_file_location("smoke_worker_conftest", Path(__file__).with_name("conftest.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_conftest = _load_conftest()
TINY_SETS, one_thread = _conftest.TINY_SETS, _conftest.one_thread

STEPS, HALT = 2, 1  # one epoch of 2 optimizer steps, halted mid-epoch after the first
BATCH = 8  # per process and micro-step
MODES = {  # the settings each mode adds; ddp and fsdp also need 2 processes (torchrun)
    "single": (), "accum": ("optim.accum_steps=2",), "bf16": ("train.precision=bf16",),
    "ddp": ("train.strategy=ddp",), "fsdp": ("train.strategy=fsdp",),
    "cuda-bf16": ("train.device=cuda", "train.precision=bf16"),  # benchmarks/device_check.sh
}
# tiny heads for each method (a method not named here runs with its preset's): the presets' are sized
# for real runs (a 512-wide projector, 1024 prototypes)
METHOD_SETS = {
    "mae": ("method.decoder_dim=32", "method.decoder_depth=1", "method.decoder_heads=2"),
    "simmim": (),
    "msn": ("method.proj_hidden_dim=32", "method.proj_output_dim=16", "method.num_prototypes=32"),
    "byol": ("method.proj_hidden_dim=32", "method.proj_output_dim=16", "method.pred_hidden_dim=32"),
    **{name: ("method.proj_hidden_dim=32", "method.proj_output_dim=16")
       for name in ("simclr", "vicreg", "barlow", "mse")},
    "lejepa": ("method.proj_hidden_dim=32", "method.proj_output_dim=16", "method.slices=64"),
}


# beyond the recipes (on vit_micro): `RECIPE@ARCH` runs the recipe on that encoder; a ResNet with a
# joint method and T-REGS, and with MAGMA's ResNet variant (layer3 pooled as reference, output regularized)
RESNET_ENTRIES = ("byol+t-regs@resnet18", "m-vicreg@resnet18")


def smoke_entries() -> list[str]:
    from mimreg.config import recipe_names

    return [*recipe_names(), *RESNET_ENTRIES]


def smoke_sets(entry: str, mode: str, world: int) -> list[str]:
    """The `--set` strings of one entry's smoke run: tiny, on `STEPS * BATCH * world * accum` synthetic
    images (exactly STEPS optimizer steps), the online k-NN monitor on a small bank."""
    from mimreg.config import load_config

    recipe, _, arch = entry.partition("@")
    accum = 2 if mode == "accum" else 1
    base = [s for s in TINY_SETS if not s.startswith("method.")] + ([f"model.arch={arch}"] if arch else [])
    method = load_config(f"digits/{recipe}", base).method.name
    return [*base, *METHOD_SETS.get(method, ()), *MODES[mode], f"optim.batch_size={BATCH}",
            f"data.subset={STEPS * BATCH * world * accum}", "optim.warmup_epochs=0", "train.knn_bank=32",
            "train.knn_queries=32", "train.rep_monitor_images=32"]


def run_recipe(entry: str, mode: str, out: Path, world: int) -> dict:
    from mimreg import distributed as dist
    from mimreg.config import load_config
    from mimreg.engine.loop import pretrain

    sets = smoke_sets(entry, mode, world)
    recipe = entry.partition("@")[0]
    seconds = {}
    start = time.perf_counter()
    pretrain(load_config(f"digits/{recipe}", sets), out / entry / "full")
    seconds["full"] = time.perf_counter() - start
    halt = load_config(f"digits/{recipe}", [*sets, f"train.halt_after_steps={HALT}"])
    halted = pretrain(halt, out / entry / "resumed")
    assert halted.halted and halted.steps == HALT, (halted.halted, halted.steps)
    resumed = pretrain(load_config(f"digits/{recipe}", sets), out / entry / "resumed", resume=True)
    seconds["halt_and_resume"] = time.perf_counter() - start - seconds["full"]
    return {"error": None, "seconds": {k: round(v, 2) for k, v in seconds.items()},
            "loss": resumed.last_metrics.get("loss"),
            # the main process wrote the checkpoints; another may get here before the last is written
            "weight_difference": weight_difference(out / entry) if dist.is_main_process() else None}


def weight_difference(folder: Path) -> float:
    """The largest |difference| between the final weights of the uninterrupted and the resumed run."""
    import torch

    from mimreg.engine.checkpoint import load_checkpoint

    full, resumed = (load_checkpoint(folder / run / "checkpoints" / f"ckpt_{STEPS:08d}.pt")["model"]
                     for run in ("full", "resumed"))
    return max((full[k].double() - resumed[k].double()).abs().max().item() if full[k].numel() else 0.0
               for k in full if torch.is_floating_point(full[k]))


def run_all(out: Path, mode: str, recipes: list[str]) -> dict:
    """Every recipe (smoke entry) under `mode` into OUT; returns (and rank 0 writes) the results by entry."""
    from mimreg import distributed as dist

    world = dist.world_size()
    results = {}
    with one_thread():
        for recipe in recipes or smoke_entries():
            try:
                results[recipe] = run_recipe(recipe, mode, out, world)
            except Exception:  # recorded; the next recipe still runs (a config error fails on every rank)
                results[recipe] = {"error": traceback.format_exc(limit=-6)}
    if dist.is_main_process():
        (out / "results.json").write_text(json.dumps(results, indent=1))
    return results


def main(out: Path, mode: str, recipes: list[str]) -> int:
    from mimreg import distributed

    distributed.init_from_env("cuda" if mode.startswith("cuda") else "cpu")  # a no-op outside torchrun
    out.mkdir(parents=True, exist_ok=True)
    results = run_all(out, mode, recipes)
    main_process = distributed.is_main_process()
    distributed.shutdown()
    for recipe, result in results.items() if main_process else ():
        error = result["error"]
        print(f"{recipe}: " + (f"FAILED {error.strip().splitlines()[-1]}" if error else
                               f"ok, loss {result['loss']:.4f}, resumed weights differ by "
                               f"{result['weight_difference']:.2e}, {sum(result['seconds'].values()):.1f} s"))
    return 1 if any(r["error"] for r in results.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main(Path(sys.argv[1]), sys.argv[2], sys.argv[3:]))
