"""Every paper preset starts (issue 16 §2): 2 steps at its real image size and model size on CPU, the
batch reduced to 2, on a synthetic ImageNet-shaped folder (100 ImageNet-100 classes, JPEGs of
several sizes, a flat val folder with its label file). Presets of other datasets read the same folder
as `imagenet` at their own image size. The run keeps the preset's length (it halts after 2 steps),
so its warm-up and windows are the real ones. The ViT-B, ViT-S (MSN) and ResNet-50 runs take 9-21 s
each on one CPU thread: `slow` (make test-slow)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from mimreg.config import load_config
from mimreg.data.imagenet import imagenet100_wnids
from mimreg.engine.loop import pretrain
from mimreg.engine.metrics import read_metrics
from mimreg.recipes.papers import paper_rows

pytestmark = pytest.mark.usefixtures("single_thread")

# the recipe each preset starts with: its paper's method with its regularizers
RECIPES = {"magma-c100-vitt4": "m-mae", "magma-stl10-vitt8": "m-mae", "magma-tin-vitt8": "mu-mae",
           "magma-in100-vitb16": "m-mae", "magma-in1k-vitb16": "mu-mae", "umae-c10-vitt4": "u-mae",
           "umae-in100-vitb16": "u-simmim", "umae-in1k-vitb16": "u-mae", "msn-in1k-vits16": "msn",
           "mimae-in1k-vitb16": "mi-mae", "tregs-c10-r18": "byol+t-regs", "tregs-c100-r18": "barlow+t-regs",
           "tregs-in100-r18": "mse+t-regs", "tregs-in1k-r50": "byol+t-regs"}
FAST = {"magma-c100-vitt4", "magma-stl10-vitt8", "magma-tin-vitt8", "umae-c10-vitt4", "tregs-c10-r18",
        "tregs-c100-r18", "tregs-in100-r18"}  # under 5 s each; the others 9-21 s on one CPU thread
SIZES = [(300, 225), (225, 300), (256, 256)]  # (width, height): landscape, portrait, square
STEPS = 2


@pytest.fixture(scope="module")
def imagenet_tree(tmp_path_factory, load_module) -> Path:
    helpers = load_module(Path(__file__).parents[1] / "data" / "test_data_imagenet.py")
    root = tmp_path_factory.mktemp("imagenet")
    helpers.make_imagenet(root, imagenet100_wnids(), per_class=1, sizes=SIZES)
    return root


def test_every_paper_preset_is_started():
    assert set(RECIPES) == {row.recipe.split("/")[0] for row in paper_rows()}


@pytest.mark.parametrize("preset", [p if p in FAST else pytest.param(p, marks=pytest.mark.slow) for p in RECIPES])
def test_preset_trains_two_steps_at_its_real_size(preset, imagenet_tree, tmp_path):
    cfg = load_config(f"{preset}/{RECIPES[preset]}", world=1)
    size, arch, patch, epochs = cfg.img_size, cfg.model.arch, cfg.model.patch_size, cfg.train.epochs
    name = cfg.data.name if cfg.data.name.startswith("imagenet") else "imagenet"
    cfg = load_config(f"{preset}/{RECIPES[preset]}", [
        f"data.name={name}", f"data.root={imagenet_tree}", f"data.img_size={size}", "data.num_workers=0",
        "optim.batch_size=2", f"train.halt_after_steps={STEPS}", "train.device=cpu", "train.precision=fp32",
        "train.progress=false", "train.log_every=1"], world=1)
    assert (cfg.img_size, cfg.model.arch, cfg.model.patch_size, cfg.train.epochs) == (size, arch, patch, epochs)

    result = pretrain(cfg, tmp_path / "run")
    assert (result.steps, result.halted) == (STEPS, True)
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2]
    assert all(math.isfinite(r["loss"]) for r in train)
    start = next(r for r in records if r["kind"] == "start")
    assert start["images"] == 100  # one JPEG per class, every class
    assert (start["steps_per_epoch"], start["total_steps"]) == (50, 50 * epochs)  # the preset's whole run
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == STEPS
