"""`mimreg eval finetune`: end-to-end fine-tuning of a pretrained encoder, MAE's protocol, as a task
of the training engine (engine/loop.py): the same loop, accumulation, precision, distribution,
checkpoints, signal handling, run-folder lock, non-finite refusal and resume rules as pretraining.

Built from timm's pieces: VisionTransformer + layer-decay parameter groups, RandAugment and random
erasing (create_transform), Mixup/CutMix with label smoothing and the soft-target loss. Warm-up then
cosine lr per step, AdamW.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from timm.data import Mixup, RandomResizedCropAndInterpolation, rand_augment_transform
from timm.data.random_erasing import RandomErasing
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from torch import nn
from torch.utils.data import DataLoader
from torchvision import transforms as T

from mimreg import distributed as dist
from mimreg.config import OptimConfig, TrainConfig
from mimreg.data import (TransformedDataset, collate_skipping_bad, dataset_stats, eval_crop_fraction, eval_transform,
                         load_dataset)
from mimreg.engine.data import EpochBatches, LoaderData
from mimreg.engine.init_weights import vit_from_init
from mimreg.engine.loop import checkpoint_to_resume, join_processes, run_task
from mimreg.engine.metrics import read_metrics
from mimreg.engine.schedule import learning_rate
from mimreg.engine.task import StepResult, seed_process
from mimreg.errors import ConfigError, DataError, MimregError
from mimreg.eval.evaluate import run_dir_of
from mimreg.eval.finetune_config import FinetuneConfig, changed_settings, resolve_config
from mimreg.eval.finetune_model import build_classifier, freeze_all_but_last, layer_decay_groups
from mimreg.eval.frozen import load_encoder
from mimreg.eval.linear import sweep_probe
from mimreg.eval.results import result_stem, save_result
from mimreg.eval.splits import stratified_fraction


class NumpySeeded:
    """Runs a transform with numpy's global RNG seeded from torch's (which TransformedDataset seeds
    per sample), then puts numpy's state back: timm's RandAugment draws its ops from numpy, and the
    main process's numpy stream belongs to Mixup."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, image):
        state = np.random.get_state()
        np.random.seed(int(torch.randint(0, 2**31 - 1, ())))
        try:
            return self.transform(image)
        finally:
            np.random.set_state(state)


# RandAugment's magnitude is clipped at 10 by default, where its increasing posterize keeps 0 bits, which
# Pillow >= 10 refuses (MAE ran on an older Pillow that returned a black image); 9.99 keeps 1 bit there and
# changes no other op noticeably.
RANDAUG_MAGNITUDE_MAX = 9.99


def train_transform(img_size: int, randaug: str, reprob: float, mean, std, crop_scale: float = 0.08,
                    hflip: float = 0.5) -> T.Compose:
    """MAE's fine-tuning augmentation, as timm's create_transform(is_training=True) builds it: random
    resized crop (crop_scale-1 of the area, bicubic), flip, RandAugment, normalise, random erasing (per-pixel noise)."""
    steps = [RandomResizedCropAndInterpolation(img_size, scale=(crop_scale, 1.0), interpolation="bicubic"),
             T.RandomHorizontalFlip(hflip)]
    if randaug != "none":
        hparams = {"translate_const": int(img_size * 0.45), "img_mean": tuple(min(255, round(255 * m)) for m in mean),
                   "interpolation": Image.BICUBIC, "magnitude_max": RANDAUG_MAGNITUDE_MAX}
        try:
            steps.append(rand_augment_transform(randaug, hparams))
        except (AssertionError, ValueError, KeyError) as err:
            raise ConfigError(f"--randaug {randaug!r} is not a timm RandAugment string ({err}); e.g. "
                              "rand-m9-mstd0.5-inc1, or none") from None
    steps += [T.ToTensor(), T.Normalize(tuple(mean), tuple(std))]
    if reprob > 0:
        steps.append(RandomErasing(reprob, mode="pixel", max_count=1, device="cpu"))
    return T.Compose(steps)


def _datasets(name: str, root, img_size: int, cfg: FinetuneConfig, skip_bad_images: bool = False, columns=None):
    train = load_dataset(name, "train", root, skip_bad_images=skip_bad_images, columns=columns)
    test = load_dataset(name, "test", root, skip_bad_images=skip_bad_images, columns=columns)
    if (np.asarray(train.labels) < 0).all():
        raise DataError(f"dataset {name!r} has no labels in its train split; fine-tuning needs labelled images")
    if cfg.fraction is not None:
        train = train.subset(stratified_fraction(train.labels, cfg.fraction, cfg.seed))
    if cfg.test_images is not None and cfg.test_images < len(test):
        test = test.subset(np.sort(np.random.default_rng(cfg.seed).choice(len(test), cfg.test_images, replace=False)))
    mean, std = dataset_stats(name)
    augment = train_transform(img_size, cfg.randaug, cfg.reprob, mean, std, cfg.crop_scale, cfg.hflip)
    plain = eval_transform(img_size, mean, std, eval_crop_fraction(name))
    return (TransformedDataset(train, NumpySeeded(augment), seed=cfg.seed), TransformedDataset(test, plain, seed=cfg.seed),
            TransformedDataset(train, plain, seed=cfg.seed), int(train.num_classes))


@torch.no_grad()
def init_head_from_probe(model: torch.nn.Module, train_plain: TransformedDataset, device: torch.device,
                         seed: int) -> dict:
    """LP-FT (Kumar et al., ICLR 2022, Sec. 4): the head starts as the default `sweep` probe of the
    frozen features it reads (un-augmented training images), not near zero, so that fine-tuning
    starts from the probe's accuracy and its first steps do not distort the features through a
    random head. Returns the probe's summary (train top-1, chosen lr and weight decay)."""
    model.eval()
    features, labels = [], []
    for batch in DataLoader(train_plain, batch_size=256, collate_fn=collate_skipping_bad):
        if batch.images is not None:
            tokens = model.forward_features(batch.images.to(device))
            features.append(model.forward_head(tokens, pre_logits=True).float().cpu())
            labels.append(batch.labels)
    x, y = torch.cat(features), torch.cat(labels)
    fit = sweep_probe(x, y, x, y, seed=seed, keep_head=True)  # "test" = train: only the head is kept
    model.head.weight.copy_(fit["head"]["weight"])
    model.head.bias.copy_(fit["head"]["bias"])
    model.train()
    return {"train_top1": fit["train_top1"], "weight_decay": fit["weight_decay"]}


def _loss_and_mixup(cfg: FinetuneConfig, num_classes: int):
    """MAE's choice: soft-target CE under Mixup/CutMix (smoothing folded into the targets), else
    label-smoothed CE, else plain CE."""
    if cfg.mixup > 0 or cfg.cutmix > 0:
        mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mixup_prob,
                      switch_prob=cfg.mixup_switch_prob, mode="batch", label_smoothing=cfg.smoothing,
                      num_classes=num_classes)
        return SoftTargetCrossEntropy(), mixup
    if cfg.smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=cfg.smoothing), None
    return torch.nn.CrossEntropyLoss(), None


@torch.no_grad()
def evaluate_classifier(model: torch.nn.Module, test: TransformedDataset, device: torch.device,
                        batch_size: int = 256) -> dict:
    """Top-1 / top-5 (percent) on the test split; under DDP each process scores every world-th image."""
    was_training = model.training
    model.eval()
    indices = list(range(dist.rank(), len(test), dist.world_size()))
    loader = DataLoader(torch.utils.data.Subset(test, indices), batch_size=batch_size, collate_fn=collate_skipping_bad)
    counts = torch.zeros(3, device=device)
    for batch in loader:
        if batch.images is None:
            continue
        logits = model(batch.images.to(device))
        labels = batch.labels.to(device)[:, None]
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        counts += torch.stack([(top[:, :1] == labels).sum(), (top == labels).any(1).sum(),
                               torch.tensor(float(len(labels)), device=device)]).float()
    counts = dist.all_reduce_mean(counts) * dist.world_size()
    model.train(was_training)
    return {"top1": float(100 * counts[0] / counts[2]), "top5": float(100 * counts[1] / counts[2])}


class FinetuneModule(nn.Module):
    """The classifier and its training loss, Mixup/CutMix mixing the batch first when on. Called
    without labels it returns the logits: evaluations go through this module too, as FSDP gathers
    the root's parameters only in the root's own forward."""

    def __init__(self, classifier: nn.Module, criterion: nn.Module, mixup: Mixup | None):
        super().__init__()
        self.classifier, self.criterion, self.mixup = classifier, criterion, mixup

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None, *, epoch: int = 0,
                monitor: bool = False, generator: torch.Generator | None = None) -> StepResult | torch.Tensor:
        if labels is None:
            return self.classifier(images)
        targets = labels
        if self.mixup is not None:
            images, targets = self.mixup(images, labels)
        loss = self.criterion(self.classifier(images), targets)
        return StepResult(total=loss, objective=loss.detach())


def engine_settings(cfg: FinetuneConfig, device: str) -> tuple[OptimConfig, TrainConfig]:
    """The engine's optimisation and training settings of a fine-tuning (AdamW with torch's default
    betas, as MAE's main_finetune.py)."""
    optim = OptimConfig(batch_size=cfg.batch_size, accum_steps=cfg.accum_steps, blr=cfg.blr, lr=cfg.lr,
                        min_lr=cfg.min_lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.999),
                        warmup_epochs=cfg.warmup_epochs, clip_grad=cfg.clip_grad)
    train = TrainConfig(epochs=cfg.epochs, seed=cfg.seed, device=device, precision=cfg.precision,
                        strategy=cfg.strategy, ckpt_every_steps=cfg.ckpt_every_steps, keep_last=cfg.keep_last,
                        halt_after_steps=cfg.halt_after_steps, online_probe=False, knn_every=0,
                        dist_timeout_s=cfg.dist_timeout_s)
    return optim, train


class FinetuneTask:
    """A `Task` (engine/task.py): fine-tune `encoder` on `data_name` with `cfg`, on `device`."""

    kind = "finetune"

    def __init__(self, cfg: FinetuneConfig, encoder, data_name: str, root, img_size: int, device: torch.device,
                 record: dict, start_from_probe: bool, device_name: str, skip_bad_images: bool = False,
                 columns=None):
        self.cfg, self.device, self.record, self.data_name = cfg, device, record, data_name
        self.optim, self.train = engine_settings(cfg, device_name)
        self.num_workers = cfg.num_workers
        seed_process(cfg.seed)
        train, self.test, train_plain, num_classes = _datasets(data_name, root, img_size, cfg, skip_bad_images, columns)
        classifier = build_classifier(encoder, num_classes, cfg.head, cfg.drop_path).to(device)
        self.head_probe = init_head_from_probe(classifier, train_plain, device, cfg.seed) if start_from_probe else None
        freeze_all_but_last(classifier, cfg.blocks)
        self.module = FinetuneModule(classifier, *_loss_and_mixup(cfg, num_classes))
        batches = EpochBatches(len(train), cfg.batch_size, dist.world_size(), dist.rank(), cfg.seed, cfg.accum_steps)
        if batches.steps < 1:
            raise ConfigError(f"{len(train)} training images give no step at batch {cfg.batch_size} x accum "
                              f"{cfg.accum_steps} x {dist.world_size()} processes; lower --batch-size")
        self.data = LoaderData(train, batches, num_classes, len(train))

    @staticmethod
    def stored_record(saved: dict) -> dict:
        return saved

    def parameter_groups(self, module: nn.Module) -> list[dict]:
        return layer_decay_groups(module.classifier, self.cfg.weight_decay, self.cfg.layer_decay)

    def clipped_parameters(self):
        return [p for p in self.module.classifier.parameters() if p.requires_grad]

    def on_step_end(self, progress: float) -> None:
        pass

    def step_facts(self, epoch: int) -> dict:
        return {}

    def between_steps(self, step: int, total_steps: int) -> dict | None:
        return None

    def evaluate(self, epochs_done: int, last: bool) -> dict | None:
        if epochs_done % self.cfg.eval_every and not last:
            return None
        return {"kind": "eval", **evaluate_classifier(self.module, self.test, self.device)}

    def start_facts(self, world: int) -> tuple[dict, str]:
        lr = learning_rate(self.optim, world)
        return ({"config": "finetune", "lr": lr, "pretrained": self.record["pretrained"]},
                f"fine-tuning {self.record['pretrained']} on {self.data_name}: {self.data.num_images} images, lr {lr:g}")

    def config_notes(self, world: int) -> list[str]:
        return [f"fine-tuning; lr {learning_rate(self.optim, world):g}"]


def curves_of(records: list[dict]) -> list[dict]:
    """Per epoch: train loss, lr at its last step, and top-1 / top-5 where it was evaluated."""
    lr_at = {r["step"]: r["lr"] for r in records if r.get("kind") == "train"}
    evals = {r["step"]: r for r in records if r.get("kind") == "eval"}
    curves = []
    for r in (r for r in records if r.get("kind") == "epoch"):
        point = {"epoch": r["epoch"] + 1, "step": r["step"], "train_loss": r["loss"], "lr": lr_at[r["step"]]}
        if r["step"] in evals:
            point.update(top1=evals[r["step"]]["top1"], top5=evals[r["step"]]["top5"])
        curves.append(point)
    return curves


def finetune(checkpoint, overrides: dict | None = None, *, data=None, data_root=None, device="auto", out=None,
             resume=False, skip_bad_images=False, echo=print, init=None, img_size=None) -> dict:
    """Fine-tune the encoder of `checkpoint` (a run folder or ckpt file) on `data` (default: the
    pretraining dataset) into `out`; write RUN/evals/finetune_<data>_<head>[_<changed settings>].json.
    With `init` instead of `checkpoint` (model.init's sources: a timm name or weights file), the
    baseline without pretraining by mimreg: `data` and `out` are needed, the result goes to OUT/evals."""
    began = time.time()
    if init is not None:
        if checkpoint is not None or data is None or out is None:
            raise MimregError("--init fine-tunes weights that no mimreg run made: pass it with --data and --out, "
                              "without --checkpoint")
        encoder = vit_from_init(init, img_size)
        checkpoint, meta = Path(out), {"step": None, "epoch": None, "recipe": f"init {init}", "latest": True}
    else:
        encoder, pre_cfg, meta = load_encoder(checkpoint)
    cfg, preset = resolve_config(encoder.arch, encoder.depth, overrides or {})
    name = data or pre_cfg.data.name
    root = data_root if data is not None or data_root is not None else pre_cfg.data.root
    options = {k: v for k, v in changed_settings(cfg, preset).items() if k != "head"}
    out = Path(out) if out else run_dir_of(checkpoint) / "finetune" / result_stem("finetune", None, name, cfg.head, options)
    dev = join_processes(device, key="--device", timeout_s=cfg.dist_timeout_s)
    echo = echo if dist.is_main_process() else (lambda *args: None)
    record = {"finetune": dataclasses.asdict(cfg), "pretrained": str(init) if init else str(Path(checkpoint).resolve()),
              "data": name,
              "preset": preset}
    found = checkpoint_to_resume(out, resume)  # the head starts from the probe only in a new fine-tuning
    task = FinetuneTask(cfg, encoder, name, root, encoder.img_size, dev, record,
                        start_from_probe=cfg.head_init == "probe" and found is None, device_name=str(device),
                        skip_bad_images=skip_bad_images,
                        columns=None if init is not None else pre_cfg.data.hf_columns())
    run = run_task(task, out, resume, found, dev)
    if run.halted:
        echo(f"halted at step {run.steps} (--halt-after-steps) with checkpoint {run.checkpoint}")
        return {"halted": True, "step": run.steps, "out": str(out)}
    curves = curves_of(read_metrics(out / "metrics.jsonl"))
    evals = [c for c in curves if "top1" in c]
    result = {"top1": evals[-1]["top1"], "top5": evals[-1]["top5"], "best_top1": max(c["top1"] for c in evals),
              "train_loss": curves[-1]["train_loss"], "epochs": cfg.epochs, "steps": run.steps,
              "lr": learning_rate(task.optim, dist.world_size()), "processes": dist.world_size(),
              "num_classes": task.data.num_classes, "finetune_images": task.data.num_images, "config": record,
              "curves": curves, "out": str(out), "minutes": (time.time() - began) / 60,  # of this call
              **({"head_probe": task.head_probe} if task.head_probe else {})}
    meta = {**meta, "checkpoint": str(checkpoint), "data": name, "train_images": task.data.num_images,
            "test_images": len(task.test)}
    echo(f"fine-tuned: top-1 {result['top1']:.2f} top-5 {result['top5']:.2f} after {cfg.epochs} epochs")
    path = save_result(run_dir_of(checkpoint), meta, protocol="finetune", variant=None, pool=cfg.head, options=options,
                       result=result) if dist.is_main_process() else None
    if path:
        echo(f"wrote {path}")
    return {**result, "file": str(path) if path else None}
