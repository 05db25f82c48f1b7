"""Every paper preset against its paper (issue 16 §4), without training: encoder size, global batch and
effective lr, warm-up and total steps on the dataset's real size, the epochs each regularizer is on,
the decoder, and the papers table's rows (their commands load, their protocols exist, the README
shows the same table `mimreg recipes --papers` prints)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from mimreg.cli import build_parser
from mimreg.config import config_to_dict, load_config, preset_names
from mimreg.engine.build import build_encoder, build_method, build_regularizer
from mimreg.models import ViTEncoder
from mimreg.recipes.cost import encoder_flops, gflop_per_image, vit_encoder_flops
from mimreg.recipes.papers import TRAIN_IMAGES, paper_rows, papers_table
from mimreg.run_length import step_counts

README = Path(__file__).resolve().parents[2] / "README.md"

# The papers' values (source in each preset's comments): (recipe, GPUs, dataset, image size, patch,
# encoder M params, global batch, lr in force, epochs, warm-up epochs, decoder (dim, depth, heads),
# {regularizer: (first epoch, last epoch it is on (None: the run's last), its weight)})
PAPER = {
    "magma-in100-vitb16": ("m-mae", 1, "imagenet100", 224, 16, 86, 256, 1.5e-4, 400, 40, (512, 8, 16),
                           {"magma": (10, 109, 1.0)}),  # Tab. 4: on epochs 10-109 of 400
    "magma-c100-vitt4": ("m-mae", 1, "cifar100", 32, 4, 5.4, 256, 1.5e-4, 400, 40, (192, 4, 6), {"magma": (10, 109, 1.0)}),
    "magma-stl10-vitt8": ("m-mae", 1, "stl10", 96, 8, 5.4, 256, 1.5e-4, 400, 40, (192, 4, 6), {"magma": (10, 109, 1.0)}),
    "magma-tin-vitt8": ("m-mae", 1, "tiny-imagenet", 64, 8, 5.4, 256, 1.5e-4, 400, 40, (192, 4, 6),
                        {"magma": (10, 109, 1.0)}),
    "magma-in1k-vitb16": ("mu-mae", 8, "imagenet", 224, 16, 86, 1024, 6e-4, 200, 40, (512, 8, 16),
                          {"magma": (3, 102, 1.0), "uniformity": (0, None, 0.01)}),  # official IN-1k config: e_st 3, e_dur 100
    "umae-in100-vitb16": ("u-mae", 8, "imagenet100", 224, 16, 86, 1024, 6e-4, 200, 40, (512, 8, 16),
                          {"uniformity": (0, None, 0.01)}),  # pretrain.sh: 8 x 128, blr 1.5e-4
    "umae-in1k-vitb16": ("u-mae", 8, "imagenet", 224, 16, 86, 1024, 6e-4, 200, 40, (512, 8, 16),
                         {"uniformity": (0, None, 0.01)}),
    "umae-c10-vitt4": ("u-mae", 8, "cifar10", 32, 4, 5.4, 4096, 2.4e-3, 2000, 40, (192, 4, 6), {"uniformity": (0, None, 0.01)}),
    "msn-in1k-vits16": ("msn", 16, "imagenet", 224, 16, 22, 1024, 1e-3, 800, 15, None, {}),  # lr 1e-3 absolute
    "mimae-in1k-vitb16": ("mi-mae", 8, "imagenet", 224, 16, 86, 1024, 6e-4, 200, 10, (512, 8, 16),
                          {"infonce_masks": (10, None, 1.0), "club": (10, None, 10.0)}),
    "tregs-c10-r18": ("byol+t-regs", 1, "cifar10", 32, None, 11, 256, 1.0, 500, 10, None, {"mst": (0, None, 1.0)}),
    "tregs-c100-r18": ("byol+t-regs", 1, "cifar100", 32, None, 11, 256, 1.0, 500, 10, None, {"mst": (0, None, 1.0)}),
    "tregs-in100-r18": ("byol+t-regs", 1, "imagenet100", 224, None, 11, 256, 0.5, 400, 10, None, {"mst": (0, None, 1.0)}),
    "tregs-in1k-r50": ("byol+t-regs", 8, "imagenet", 224, None, 23.5, 1024, 0.1125, 100, 10, None, {"mst": (0, None, 1.0)}),
}
# the steps those give on the real datasets, worked out by hand: (steps per epoch, warm-up, total)
STEPS = {"magma-in100-vitb16": (494, 19_760, 197_600),  # 126689 // 256
         "magma-in1k-vitb16": (1251, 50_040, 250_200),  # 1281167 // 1024
         "umae-in100-vitb16": (123, 4920, 24_600),  # 126689 // 1024
         "umae-c10-vitt4": (12, 480, 24_000),  # 50000 // 4096
         "msn-in1k-vits16": (1251, 18_765, 1_000_800),
         "mimae-in1k-vitb16": (1251, 12_510, 250_200),
         "magma-stl10-vitt8": (410, 16_400, 164_000),  # 105000 // 256
         "tregs-c10-r18": (195, 1950, 97_500)}  # 50000 // 256


def paper_presets() -> list[str]:
    return [name for name in preset_names() if name.split("-")[0] in ("magma", "umae", "msn", "mimae", "tregs")]


def test_every_paper_preset_is_checked_and_in_the_papers_table():
    assert sorted(PAPER) == paper_presets()
    assert {row.recipe.split("/")[0] for row in paper_rows()} == set(PAPER)


@pytest.mark.parametrize("preset", sorted(PAPER))
def test_preset_matches_its_paper(preset):
    recipe, gpus, data, size, patch, params, batch, lr, epochs, warmup, decoder, windows = PAPER[preset]
    cfg = load_config(f"{preset}/{recipe}", world=gpus)
    assert (cfg.data.name, cfg.img_size, cfg.model.patch_size) == (data, size, patch)
    encoder = build_encoder(cfg)
    assert sum(p.numel() for p in encoder.parameters()) / 1e6 == pytest.approx(params, rel=0.02)
    assert cfg.optim.batch_size * cfg.optim.accum_steps * gpus == batch
    assert cfg.optim.lr_in_force(gpus) == pytest.approx(lr, rel=1e-9)
    assert (cfg.train.epochs, cfg.optim.warmup_epochs) == (epochs, warmup)
    options = cfg.method.options
    if decoder is not None:
        assert (options.decoder_dim, options.decoder_depth, options.decoder_heads) == decoder
    method = build_method(cfg, encoder)
    for entry in cfg.regularizers:  # the engine's regularizer objects, asked per epoch
        reg = build_regularizer(entry, method)
        on = [epoch for epoch in range(epochs) if reg.weight_at(epoch) > 0]
        first, last, weight = windows[entry.name]
        assert (on[0], on[-1], len(on)) == (first, last or epochs - 1, (last or epochs - 1) - first + 1), entry.name
        assert reg.weight_at(first) == weight, entry.name
    assert sorted(windows) == sorted(entry.name for entry in cfg.regularizers)
    steps = step_counts(TRAIN_IMAGES[data], cfg.optim.batch_size, gpus, cfg.optim.accum_steps, epochs, warmup)
    assert steps == STEPS.get(preset, steps)
    assert steps[2] == epochs * steps[0] and steps[0] == TRAIN_IMAGES[data] // batch


# solo-learn's BYOL optimizer for T-REGS's presets (scripts/pretrain/{cifar,imagenet-100,imagenet}/byol.yaml):
# (weight decay, trust coefficient eta, clip_lr); LARS with momentum 0.9 throughout
TREGS_LARS = {"tregs-c10-r18": (1e-5, 0.02, True), "tregs-c100-r18": (1e-5, 0.02, True),
              "tregs-in100-r18": (1e-6, 0.02, True), "tregs-in1k-r50": (1e-6, 0.001, False)}


@pytest.mark.parametrize("preset", sorted(PAPER))
def test_optimizer_is_the_protocols(preset):
    optim = load_config(f"{preset}/{PAPER[preset][0]}", world=PAPER[preset][1]).optim
    if preset in TREGS_LARS:
        assert (optim.name, optim.momentum, optim.betas) == ("lars", 0.9, None)
        assert (optim.weight_decay, optim.lars_eta, optim.lars_clip) == TREGS_LARS[preset]
    else:  # the ViT papers: AdamW
        assert (optim.name, optim.lars_eta, optim.momentum) == ("adamw", None, None)


@pytest.mark.parametrize("row", paper_rows(), ids=lambda r: f"{r.paper} {r.table} {r.row}")
def test_row_loads_and_names_real_protocols(row):
    cfg = config_to_dict(load_config(row.recipe, list(row.sets), world=row.gpus))
    for item in row.sets:  # each --set of the row is in force
        key, _, value = item.partition("=")
        assert setting(cfg, key) == yaml.safe_load(value), item
    for protocol in row.evals:
        build_parser().parse_args(["eval", *protocol.split(), "--checkpoint", "RUN"])


def setting(cfg: dict, key: str):
    """`regularizers.magma.weight` in a config mapping: list entries by their name."""
    node = cfg
    for part in key.split("."):
        node = next(e for e in node if e["name"] == part) if isinstance(node, list) else node[part]
    return node


def test_readme_table_is_the_printed_one(capsys):
    from mimreg.cli import main

    assert main(["recipes", "--papers"]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed == papers_table()
    assert printed in README.read_text()


# ---------------------------------------------------------------- the cost
def test_vit_flops_formula_matches_torch_counter():
    """The formula's forward FLOPs of a ViT against torch's counter on the real encoder (full tokens),
    built with timm's explicit attention matmuls (the counter does not see CPU's fused attention)."""
    from timm.layers import set_fused_attn
    from torch.utils.flop_counter import FlopCounterMode

    set_fused_attn(False)
    try:
        encoder = ViTEncoder("vit_tiny", img_size=64, patch_size=8).eval()
    finally:
        set_fused_attn(True)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        encoder.vit(torch.zeros(1, 3, 64, 64))
    assert vit_encoder_flops("vit_tiny", 64, 8) == pytest.approx(counter.get_total_flops(), rel=0.01)


def test_known_forward_flops_and_mae_cost():
    """ViT-B/16 at 224: 17.6 GMACs; ResNet-50 at 224: 4.1 GMACs (2 FLOP per MAC). MAE ViT-B/16 trains
    on 49 visible tokens + cls and decodes 197 tokens in its 512-wide 8-block decoder."""
    vitb = load_config("magma-in100-vitb16/mae", world=1)
    assert encoder_flops(vitb) / 1e9 == pytest.approx(35.1, rel=0.01)
    assert encoder_flops(load_config("tregs-in1k-r50/byol", world=8)) / 1e9 == pytest.approx(8.2, rel=0.01)
    encoder = vit_encoder_flops("vit_base", 224, 16, keep=0.25)
    decoder = 2 * 50 * 768 * 512 + 8 * 2 * (12 * 197 * 512**2 + 2 * 197**2 * 512) + 2 * 197 * 512 * 768
    assert gflop_per_image(vitb) == pytest.approx(3 * (encoder + decoder) / 1e9, rel=1e-9)
    mi = load_config("mimae-in1k-vitb16/mi-mae", world=8)
    assert gflop_per_image(mi) == pytest.approx(4 * gflop_per_image(vitb), rel=1e-9)  # K = 4 masked views
