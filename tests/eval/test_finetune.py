"""`mimreg eval finetune`: timm's layer-decay groups, Mixup targets, partial fine-tuning, exact resume,
the encoder it starts from, warm-ups that follow the run, the crop and flip settings, a short
fine-tuning that learns, and the probe-initialised head (LP-FT)."""

from __future__ import annotations

import json

import pytest
import torch

from mimreg.engine.checkpoint import latest_checkpoint, load_checkpoint
from mimreg.errors import ConfigError
from mimreg.eval.finetune import _loss_and_mixup, finetune
from mimreg.eval.finetune_config import resolve_config
from mimreg.eval.finetune_model import build_classifier, freeze_all_but_last, layer_decay_groups
from mimreg.eval.frozen import load_encoder
from mimreg.models import ViTEncoder
from timm.models.vision_transformer import VisionTransformer
from timm.optim import param_groups_layer_decay

pytestmark = pytest.mark.usefixtures("single_thread")

# 62 synthetic training images (1/8 of each class, rounded), batches of 16: 3 steps per epoch
TINY = dict(epochs=2, batch_size=16, fraction=0.125, warmup_epochs=0.5, test_images=32, blr=2e-3)


def quiet(*args):
    pass


def mae_layer_scale(name: str, depth: int, decay: float) -> float:
    """MAE's util/lr_decay.py: cls/pos/patch embed are layer 0, block i is layer i + 1, the rest depth + 1;
    scale = decay^(depth + 1 - layer)."""
    if name.startswith(("cls_token", "pos_embed", "patch_embed")):
        layer = 0
    elif name.startswith("blocks."):
        layer = int(name.split(".")[1]) + 1
    else:
        layer = depth + 1
    return decay ** (depth + 1 - layer)


@pytest.mark.parametrize("head", ["gap", "cls"])
def test_layer_decay_groups_are_maes(head):
    model = build_classifier(ViTEncoder("vit_micro", 32, 4), num_classes=10, head=head, drop_path=0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    seen = set()
    for group in layer_decay_groups(model, weight_decay=0.05, layer_decay=0.75):
        for param in group["params"]:
            name = names[id(param)]
            seen.add(name)
            assert group["lr_scale"] == pytest.approx(mae_layer_scale(name, 6, 0.75)), name
            no_decay = param.ndim == 1 or name in ("cls_token", "pos_embed")
            assert group["weight_decay"] == (0.0 if no_decay else 0.05), name
    assert seen == {n for n, _ in model.named_parameters()}  # every parameter, positions included
    assert ("fc_norm.weight" in seen) == (head == "gap") and ("norm.weight" in seen) == (head == "cls")
    # timm's own grouping of a plain VisionTransformer: the same for MAE's gap head; with the cls head
    # timm puts the final norm in the last block's layer (why FinetuneViT regroups it)
    plain = VisionTransformer(img_size=32, patch_size=4, embed_dim=128, depth=6, num_heads=4, num_classes=10,
                              global_pool="avg" if head == "gap" else "token")
    timm_scales = {n: g["lr_scale"] for g in param_groups_layer_decay(plain, 0.05, layer_decay=0.75,
                                                                       no_weight_decay_list=plain.no_weight_decay())
                   for p in g["params"] for n, q in plain.named_parameters() if q is p}
    ours = {names[id(p)]: g["lr_scale"] for g in layer_decay_groups(model, 0.05, 0.75) for p in g["params"]}
    differing = {n for n in ours if ours[n] != pytest.approx(timm_scales[n])}
    assert differing == (set() if head == "gap" else {"norm.weight", "norm.bias"})


def test_partial_fine_tuning_groups_only_the_last_blocks_and_the_head():
    model = build_classifier(ViTEncoder("vit_micro", 32, 4), num_classes=10, head="gap", drop_path=0.0)
    freeze_all_but_last(model, 2)
    grouped = {n for g in layer_decay_groups(model, 0.05, 0.75) for p in g["params"]
               for n, q in model.named_parameters() if q is p}
    assert {n.split(".")[0] + ("." + n.split(".")[1] if n.startswith("blocks") else "") for n in grouped} == {
        "blocks.4", "blocks.5", "fc_norm", "head"}
    freeze_all_but_last(model, 0)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        "fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"}


def test_mixup_targets_are_distributions_matching_the_mixed_images():
    cfg, _ = resolve_config("vit_micro", 6, {"cutmix": 0.0, "mixup": 0.8, "smoothing": 0.1})
    criterion, mixup = _loss_and_mixup(cfg, num_classes=10)
    torch.manual_seed(0)
    images = torch.randn(8, 3, 32, 32)
    labels = torch.arange(8)  # distinct from their flipped partners 7..0
    mixed, targets = mixup(images.clone(), labels)
    assert targets.shape == (8, 10) and (targets >= 0).all()
    torch.testing.assert_close(targets.sum(1), torch.ones(8))
    # smoothed one-hot: 1 - s + s/C on the label, s/C elsewhere; mixed with weight lam
    lam = (targets[0, 0] - 0.01) / 0.9
    torch.testing.assert_close(mixed, lam * images + (1 - lam) * images.flip(0), rtol=1e-5, atol=1e-5)
    assert 0 < lam < 1 and isinstance(criterion, type(criterion))
    cutmix, _ = resolve_config("vit_micro", 6, {"mixup": 0.0})
    _, both = _loss_and_mixup(cutmix, num_classes=10)
    _, cut_targets = both(images.clone(), labels)
    torch.testing.assert_close(cut_targets.sum(1), torch.ones(8))


def test_settings_are_checked_with_the_fix_named():
    with pytest.raises(ConfigError, match="even batch_size"):
        resolve_config("vit_micro", 6, {"batch_size": 15})
    with pytest.raises(ConfigError, match=r"blocks must lie in \[0, 6\]"):
        resolve_config("vit_micro", 6, {"blocks": 7})
    with pytest.raises(ConfigError, match="1% is 0.01"):
        resolve_config("vit_micro", 6, {"fraction": 1.0001})
    with pytest.raises(ConfigError, match="unknown fine-tuning setting"):
        resolve_config("vit_micro", 6, {"layerdecay": 0.6})
    base, preset = resolve_config("vit_base", 12, {})
    assert preset == "mae-vit-base" and (base.layer_decay, base.blr, base.drop_path) == (0.65, 5e-4, 0.1)
    large, _ = resolve_config("vit_large", 24, {"layer_decay": 0.8})
    assert (large.layer_decay, large.epochs, large.drop_path) == (0.8, 50, 0.2)  # given value kept
    assert (base.warmup_epochs, large.warmup_epochs) == (5.0, 5.0)  # MAE's 5 warm-up epochs of 100 / of 50


@pytest.mark.parametrize("key", ["blr", "lr", "min_lr", "weight_decay", "mixup", "clip_grad", "dist_timeout_s"])
@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_non_finite_fine_tuning_settings_are_refused(key, value):
    with pytest.raises(ConfigError, match=rf"fine-tuning {key}=(inf|nan) is not a finite number"):
        resolve_config("vit_micro", 6, {key: value})


def test_the_warm_up_follows_a_shortened_run_and_never_covers_it():
    assert resolve_config("vit_micro", 6, {"epochs": 2})[0].warmup_epochs == pytest.approx(0.1)  # 5% of the run
    assert resolve_config("vit_micro", 6, {"epochs": 8, "warmup_epochs": "25%"})[0].warmup_epochs == 2.0
    assert resolve_config("vit_micro", 6, {"epochs": 8, "warmup_epochs": "1.5"})[0].warmup_epochs == 1.5
    with pytest.raises(ConfigError, match=r"warmup_epochs=5 covers the whole 2-epoch run.*such as 5%"):
        resolve_config("vit_micro", 6, {"epochs": 2, "warmup_epochs": 5.0})
    with pytest.raises(ConfigError, match="neither a number of epochs nor a percentage"):
        resolve_config("vit_micro", 6, {"warmup_epochs": "five"})


def test_resume_after_an_interruption_equals_the_uninterrupted_run(tiny_run, tmp_path):
    whole = finetune(tiny_run, TINY, device="cpu", out=tmp_path / "whole", echo=quiet)
    # checkpoints at steps 2, 3 (epoch end) and 4, halted at 5 with a checkpoint: the resume starts mid-epoch
    halted = finetune(tiny_run, {**TINY, "ckpt_every_steps": 2, "halt_after_steps": 5}, device="cpu",
                      out=tmp_path / "cut", echo=quiet)
    assert halted["halted"] and latest_checkpoint(tmp_path / "cut" / "checkpoints").name == "ckpt_00000005.pt"
    with pytest.raises(Exception, match="--resume"):
        finetune(tiny_run, TINY, device="cpu", out=tmp_path / "cut", echo=quiet)
    with pytest.raises(ConfigError, match=r"in \['finetune\.smoothing'\]"):
        finetune(tiny_run, {**TINY, "smoothing": 0.2}, device="cpu", out=tmp_path / "cut", resume=True, echo=quiet)
    resumed = finetune(tiny_run, TINY, device="cpu", out=tmp_path / "cut", resume=True, echo=quiet)
    assert resumed["steps"] == whole["steps"] == 6
    assert resumed["curves"] == whole["curves"]
    a = load_checkpoint(latest_checkpoint(tmp_path / "whole" / "checkpoints"))
    b = load_checkpoint(latest_checkpoint(tmp_path / "cut" / "checkpoints"))
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    report = json.loads(open(resumed["file"]).read())
    assert report["protocol"] == "finetune" and report["pool"] == "gap"
    assert set(report["result"]) >= {"top1", "top5", "curves", "config"}
    assert [c["epoch"] for c in report["result"]["curves"]] == [1, 2]
    assert report["result"]["config"]["finetune"]["layer_decay"] == 0.75  # the small preset, recorded


def test_a_short_fine_tuning_learns_the_task(tiny_run, tmp_path):
    # 12 steps without the regularising augmentations: the loss falls and the test accuracy rises
    plain = {**TINY, "epochs": 4, "lr": 1e-3, "warmup_epochs": 1, "mixup": 0, "cutmix": 0, "randaug": "none",
             "reprob": 0, "eval_every": 3}
    result = finetune(tiny_run, plain, device="cpu", out=tmp_path / "ft", echo=quiet)
    curves = result["curves"]
    assert [c["epoch"] for c in curves] == [1, 2, 3, 4] and "top1" not in curves[0] and "top1" in curves[2]
    assert curves[-1]["train_loss"] < curves[0]["train_loss"] - 0.3
    assert result["top1"] >= 80  # chance is 10%
    assert result["lr"] == 1e-3 and result["finetune_images"] == 62


def test_frozen_blocks_keep_their_pretrained_weights(tiny_run, tmp_path):
    finetune(tiny_run, {**TINY, "epochs": 1, "blocks": 1}, device="cpu", out=tmp_path / "ft", echo=quiet)
    tuned = {k.removeprefix("classifier."): v
             for k, v in load_checkpoint(latest_checkpoint(tmp_path / "ft" / "checkpoints"))["model"].items()}
    encoder, _, _ = load_encoder(tiny_run)
    pretrained = encoder.vit.state_dict()
    for name, value in pretrained.items():
        if name.startswith("blocks.5."):
            assert not torch.equal(tuned[name], value), name
        elif not name.startswith("norm."):  # gap head: the final norm is dropped
            assert torch.equal(tuned[name], value), name


@pytest.fixture
def msn_checkpoint(tmp_path):
    """An untrained MSN checkpoint whose online encoder differs from its target encoder."""
    from mimreg.config import config_to_dict, load_config
    from mimreg.engine.build import build_trainee
    from mimreg.engine.checkpoint import save_checkpoint

    cfg = load_config("digits/msn", ["data.name=synthetic", "method.proj_hidden_dim=64", "method.num_prototypes=64"])
    trainee = build_trainee(cfg, 10)
    with torch.no_grad():
        for param in trainee.method.encoder.parameters():
            param.add_(0.1)
    return save_checkpoint(tmp_path / "checkpoints", 0, {"model": trainee.state_dict(), "config": config_to_dict(cfg),
                                                         "step": 0}, keep_last=1)


def test_msn_fine_tunes_its_target_encoder(msn_checkpoint):
    state = load_checkpoint(msn_checkpoint)["model"]
    model = build_classifier(load_encoder(msn_checkpoint)[0], 10, "gap", 0.0)
    target = state["method.target_encoder.vit.blocks.0.attn.qkv.weight"]
    online = state["method.encoder.vit.blocks.0.attn.qkv.weight"]
    assert not torch.equal(target, online)
    assert torch.equal(model.state_dict()["blocks.0.attn.qkv.weight"], target)


def test_crop_scale_and_flip_settings_reach_the_training_views():
    from PIL import Image

    from mimreg.eval.finetune import train_transform

    rng = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (32, 32, 3), generator=rng, dtype=torch.uint8).numpy()
    image = Image.fromarray(pixels)
    whole = torch.from_numpy(pixels).permute(2, 0, 1).float() / 255
    keep = train_transform(32, "none", 0.0, (0.0,) * 3, (1.0,) * 3, crop_scale=1.0, hflip=0.0)
    mirror = train_transform(32, "none", 0.0, (0.0,) * 3, (1.0,) * 3, crop_scale=1.0, hflip=1.0)
    small = train_transform(32, "none", 0.0, (0.0,) * 3, (1.0,) * 3, crop_scale=0.05, hflip=0.0)
    torch.manual_seed(0)
    for _ in range(3):  # the whole image, never flipped / always flipped / cropped
        torch.testing.assert_close(keep(image), whole, atol=1 / 255, rtol=0)
        torch.testing.assert_close(mirror(image), whole.flip(-1), atol=1 / 255, rtol=0)
    assert not any(torch.allclose(small(image), whole, atol=0.1) for _ in range(3))
    assert resolve_config("vit_micro", 6, {"crop_scale": 0.2})[0].crop_scale == 0.2
    with pytest.raises(ConfigError, match=r"hflip must lie in \[0, 1\]"):
        resolve_config("vit_micro", 6, {"hflip": 2.0})


def test_a_probe_initialised_head_scores_as_the_probe_before_any_step(tiny_run):
    from mimreg.eval.finetune import _datasets, evaluate_classifier, init_head_from_probe

    cfg, _ = resolve_config("vit_micro", 6, {**TINY, "head": "cls", "head_init": "probe"})
    encoder, pre_cfg, _ = load_encoder(tiny_run)
    _, _, train_plain, classes = _datasets("synthetic", None, pre_cfg.img_size, cfg)
    model = build_classifier(encoder, classes, "cls", 0.0)
    assert evaluate_classifier(model, train_plain, torch.device("cpu"))["top1"] < 50  # MAE's near-zero head
    probe = init_head_from_probe(model, train_plain, torch.device("cpu"), seed=0)
    # the standardisation folded into the head: the classifier scores the train split as the probe did
    assert evaluate_classifier(model, train_plain, torch.device("cpu"))["top1"] == pytest.approx(probe["train_top1"])
    assert probe["train_top1"] > 90 and probe["weight_decay"] > 0


def test_resume_with_nothing_to_resume_still_starts_from_the_probe_head(tiny_run, tmp_path):
    # `--resume` on a new folder starts afresh, so the LP-FT head must still come from the probe
    # (it once stayed at MAE's near-zero head there: chance accuracy after any fine-tuning)
    still = {**TINY, "epochs": 1, "head": "cls", "head_init": "probe", "lr": 1e-9, "mixup": 0, "cutmix": 0,
             "randaug": "none", "reprob": 0}
    result = finetune(tiny_run, still, device="cpu", out=tmp_path / "ft", resume=True, echo=quiet)
    assert result["head_probe"]["train_top1"] > 90
    assert result["top1"] > 80  # the probe's head, barely moved; a near-zero head scores ~10%
