"""Fine-tuning settings: MAE's recipe (main_finetune.py, paper App. A.2), with defaults per encoder size.

Fields left as None take the preset of the encoder's architecture: MAE's own for ViT-B and ViT-L,
a CIFAR-sized one for the small ViTs trained here. Every field can be set from the CLI
(`mimreg eval finetune --layer-decay 0.65 ...`); a value given is used as given.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from mimreg.engine.resume_rules import NO_EFFECT  # settings that change no number of the result
from mimreg.errors import ConfigError
from mimreg.models import is_vit

HEADS = ("gap", "cls")
HEAD_INITS = ("zero", "probe")
PRECISIONS = ("fp32", "bf16", "fp16")
STRATEGIES = ("ddp", "fsdp")


@dataclass
class FinetuneConfig:
    epochs: int | None = None
    batch_size: int | None = None  # per process and micro-step; effective = batch_size x accum_steps x processes
    accum_steps: int = 1  # micro-steps per optimizer step (gradient accumulation)
    precision: str = "fp32"  # bf16 / fp16 (CUDA only) autocast, as train.precision
    strategy: str = "ddp"  # under torchrun: ddp or fsdp, as train.strategy
    blr: float | None = None  # lr = blr x effective batch / 256, unless lr is set
    lr: float | None = None
    min_lr: float = 1e-6
    warmup_epochs: float | str | None = None  # linear warm-up (epochs, or "5%" of the run), then half-cosine to min_lr
    weight_decay: float = 0.05
    layer_decay: float | None = None  # lr x layer_decay^(depth + 1 - layer) (BEiT / MAE)
    drop_path: float | None = None
    clip_grad: float | None = None
    mixup: float = 0.8  # Beta(alpha) of Mixup; 0 = off
    cutmix: float = 1.0  # Beta(alpha) of CutMix; 0 = off
    mixup_prob: float = 1.0  # probability of mixing a batch
    mixup_switch_prob: float = 0.5  # probability of CutMix instead of Mixup when both are on
    smoothing: float = 0.1  # label smoothing
    randaug: str = "rand-m9-mstd0.5-inc1"  # timm auto-augment string; "none" = off
    reprob: float = 0.25  # random erasing probability
    crop_scale: float | None = None  # smallest area fraction of the random resized crop (MAE: 0.08)
    hflip: float = 0.5  # probability of a horizontal flip (0 for images whose mirror is another class, as digits)
    head: str = "gap"  # gap: mean of the patch tokens + fc_norm (MAE); cls: the cls token after the final norm
    head_init: str = "zero"  # zero: MAE's trunc-normal(2e-5); probe: the frozen features' sweep probe first (LP-FT)
    fraction: float | None = None  # fine-tune on a stratified fraction of the train split (MI-MAE: 0.01)
    blocks: int | None = None  # fine-tune only the last k blocks (MAE Fig. 9); 0 = the head only; None = all
    seed: int = 0
    eval_every: int = 1  # epochs between test evaluations (the last epoch always)
    test_images: int | None = None  # score on a random subset of the test split
    num_workers: int = 0
    ckpt_every_steps: int = 0  # 0: at the end of each epoch only
    keep_last: int = 2
    halt_after_steps: int | None = None  # stop as if interrupted (to exercise --resume)
    dist_timeout_s: float = 900.0  # under torchrun: a collective waits this long for a silent process


# name -> what the preset fills; arch -> preset name. Warm-ups are fractions of the run, so a shortened
# fine-tuning (--epochs 2) keeps a warm-up shorter than itself.
PRESETS = {
    # MAE ViT-B/16 fine-tuning: 100 epochs, blr 5e-4, layer decay 0.65, drop path 0.1, 5 warm-up epochs
    "mae-vit-base": dict(epochs=100, batch_size=128, blr=5e-4, warmup_epochs="5%", layer_decay=0.65, drop_path=0.1,
                         crop_scale=0.08),
    # MAE ViT-L/16: 50 epochs, blr 1e-3, layer decay 0.75, drop path 0.2
    "mae-vit-large": dict(epochs=50, batch_size=128, blr=1e-3, warmup_epochs="10%", layer_decay=0.75, drop_path=0.2,
                          crop_scale=0.08),
    # small ViTs on 32-96 px images (CIFAR, STL, digits): fewer, shallower layers, so a milder decay
    "small": dict(epochs=100, batch_size=128, blr=1e-3, warmup_epochs="5%", layer_decay=0.75, drop_path=0.1,
                  crop_scale=0.08),
}
ARCH_PRESETS = {"vit_base": "mae-vit-base", "vit_large": "mae-vit-large"}


def preset_for(arch: str) -> str:
    return ARCH_PRESETS.get(arch, "small")


def check_finetunable(arch: str) -> None:
    """Fine-tuning builds a timm ViT classifier from the encoder: a ResNet encoder is refused."""
    if not is_vit(arch):
        raise ConfigError(f"fine-tuning builds a ViT classifier; this checkpoint's encoder is {arch}: "
                          "evaluate it with the frozen protocols (linear, knn, erank, lowshot)")


def resolve_config(arch: str, depth: int, overrides: dict) -> tuple[FinetuneConfig, str]:
    """The settings for an encoder: `overrides` (field -> value; None = not given) over its preset."""
    check_finetunable(arch)
    names = {f.name for f in dataclasses.fields(FinetuneConfig)}
    unknown = set(overrides) - names
    if unknown:
        raise ConfigError(f"unknown fine-tuning setting(s) {sorted(unknown)}; valid ones are {sorted(names)}")
    preset = preset_for(arch)
    values = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
    values["warmup_epochs"] = warmup_in_epochs(values["warmup_epochs"], values["epochs"])
    cfg = FinetuneConfig(**values)
    validate(cfg, depth)
    return cfg, preset


def warmup_in_epochs(value, epochs: int) -> float:
    """`warmup_epochs` as epochs: a number as given, "5%" as that share of `epochs`."""
    if isinstance(value, str):
        text = value.strip()
        try:
            return epochs * float(text.removesuffix("%")) / 100 if text.endswith("%") else float(text)
        except ValueError:
            raise ConfigError(f"fine-tuning warmup_epochs={value!r} is neither a number of epochs nor a "
                              "percentage of the run such as 5%") from None
    return float(value)


def validate(cfg: FinetuneConfig, depth: int) -> None:
    for key, value in dataclasses.asdict(cfg).items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"fine-tuning {key}={value} is not a finite number")
    at_least_one = {"epochs": cfg.epochs, "batch_size": cfg.batch_size, "accum_steps": cfg.accum_steps,
                    "eval_every": cfg.eval_every, "keep_last": cfg.keep_last, "dist_timeout_s": cfg.dist_timeout_s}
    for key, value in at_least_one.items():
        if value < 1:
            raise ConfigError(f"fine-tuning {key} must be >= 1, got {value}")
    in_range = {"mixup_prob": (cfg.mixup_prob, 0, 1), "mixup_switch_prob": (cfg.mixup_switch_prob, 0, 1),
                "reprob": (cfg.reprob, 0, 1), "crop_scale": (cfg.crop_scale, 0, 1), "hflip": (cfg.hflip, 0, 1), "drop_path": (cfg.drop_path, 0, 1), "layer_decay": (cfg.layer_decay, 0, 1)}
    for key, (value, low, high) in in_range.items():
        if not low <= value <= high or (key == "layer_decay" and value == 0):
            raise ConfigError(f"fine-tuning {key} must lie in {'(' if key == 'layer_decay' else '['}{low}, {high}], got {value}")
    if not 0 <= cfg.smoothing < 1:
        raise ConfigError(f"fine-tuning smoothing must lie in [0, 1), got {cfg.smoothing}")
    if min(cfg.mixup, cfg.cutmix, cfg.weight_decay, cfg.min_lr, cfg.warmup_epochs, cfg.ckpt_every_steps) < 0:
        raise ConfigError("fine-tuning mixup, cutmix, weight_decay, min_lr, warmup_epochs and ckpt_every_steps "
                          "must be >= 0")
    if cfg.warmup_epochs > 0 and cfg.warmup_epochs >= cfg.epochs:
        raise ConfigError(f"fine-tuning warmup_epochs={cfg.warmup_epochs:g} covers the whole {cfg.epochs}-epoch run, "
                          "leaving no epoch at the full learning rate; give fewer, or a share of the run such as 5%")
    if (cfg.blr if cfg.lr is None else cfg.lr) <= 0:
        raise ConfigError(f"fine-tuning lr must be positive, got blr={cfg.blr}, lr={cfg.lr}")
    if (cfg.mixup > 0 or cfg.cutmix > 0) and cfg.batch_size % 2:
        raise ConfigError(f"Mixup/CutMix mixes a batch with its flip and needs an even batch_size, got "
                          f"{cfg.batch_size}; change it or pass --mixup 0 --cutmix 0")
    if cfg.precision not in PRECISIONS or cfg.strategy not in STRATEGIES:
        raise ConfigError(f"fine-tuning precision must be one of {PRECISIONS} and strategy one of {STRATEGIES}, "
                          f"got {cfg.precision!r} and {cfg.strategy!r}")
    if cfg.head_init not in HEAD_INITS:
        raise ConfigError(f"fine-tuning head_init must be one of {HEAD_INITS}, got {cfg.head_init!r}")
    if cfg.head not in HEADS:
        raise ConfigError(f"fine-tuning head must be one of {HEADS}, got {cfg.head!r}")
    if cfg.fraction is not None and not 0 < cfg.fraction <= 1:
        raise ConfigError(f"fine-tuning fraction must lie in (0, 1], got {cfg.fraction}; 1% is 0.01")
    if cfg.blocks is not None and not 0 <= cfg.blocks <= depth:
        raise ConfigError(f"fine-tuning blocks must lie in [0, {depth}] for this {depth}-block encoder, got {cfg.blocks}")
    if cfg.test_images is not None and cfg.test_images < 1:
        raise ConfigError(f"fine-tuning test_images must be >= 1, got {cfg.test_images}")


def changed_settings(cfg: FinetuneConfig, preset: str) -> dict:
    """The settings that differ from the preset and the dataclass defaults (names the result file)."""
    defaults = {**{f.name: f.default for f in dataclasses.fields(FinetuneConfig)}, **PRESETS[preset]}
    defaults["warmup_epochs"] = warmup_in_epochs(defaults["warmup_epochs"], cfg.epochs)
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in NO_EFFECT and v != defaults[k]}
