"""`mimreg eval finetune`: end-to-end fine-tuning of a pretrained encoder, MAE's protocol.

Built from timm's pieces: VisionTransformer + layer-decay parameter groups, RandAugment and random
erasing (create_transform), Mixup/CutMix with label smoothing and the soft-target loss. Warm-up then
cosine lr per step, AdamW. Runs on CPU or GPU, one process or several under torchrun (DDP), and
resumes exactly from its checkpoints (model, optimizer, step, every process's RNG states, the
running epoch loss and the curves so far).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from timm.data import Mixup, RandomResizedCropAndInterpolation, rand_augment_transform
from timm.data.random_erasing import RandomErasing
from torchvision import transforms as T
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from torch.utils.data import DataLoader

from mimreg import distributed as dist
from mimreg.data import TransformedDataset, collate_skipping_bad, dataset_stats, eval_transform, load_dataset
from mimreg.engine.checkpoint import latest_checkpoint, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from mimreg.engine.data import EpochBatches, collate_keep_size
from mimreg.engine.schedule import lr_at
from mimreg.errors import ConfigError, DataError, MimregError, NonFiniteLossError
from mimreg.devices import local_device, resolve_device
from mimreg.eval.evaluate import run_dir_of
from mimreg.eval.finetune_config import FinetuneConfig, changed_settings, resolve_config
from mimreg.eval.finetune_model import build_classifier, build_optimizer, freeze_all_but_last
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


@dataclass
class Progress:
    """What a checkpoint must carry beyond model and optimizer for an exact resume."""

    step: int = 0
    loss_sum: float = 0.0  # of the current epoch, over its steps so far
    loss_steps: int = 0
    curves: list[dict] = field(default_factory=list)


def _datasets(name: str, root, img_size: int, cfg: FinetuneConfig):
    train = load_dataset(name, "train", root)
    test = load_dataset(name, "test", root)
    if (np.asarray(train.labels) < 0).all():
        raise DataError(f"dataset {name!r} has no labels in its train split; fine-tuning needs labelled images")
    if cfg.fraction is not None:
        train = train.subset(stratified_fraction(train.labels, cfg.fraction, cfg.seed))
    if cfg.test_images is not None and cfg.test_images < len(test):
        test = test.subset(np.sort(np.random.default_rng(cfg.seed).choice(len(test), cfg.test_images, replace=False)))
    mean, std = dataset_stats(name)
    augment = train_transform(img_size, cfg.randaug, cfg.reprob, mean, std, cfg.crop_scale, cfg.hflip)
    plain = eval_transform(img_size, mean, std)
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
    return {"train_top1": fit["train_top1"], "lr": fit["lr"], "weight_decay": fit["weight_decay"]}


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


def _devices(device: str) -> tuple[torch.device, int]:
    dev = resolve_device(device)
    dist.init_from_env(dev.type)
    return local_device(dev, dist.is_distributed()), dist.rank()


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


def _config_record(cfg: FinetuneConfig, checkpoint, data: str, preset: str) -> dict:
    return {"finetune": dataclasses.asdict(cfg), "pretrained": str(Path(checkpoint).resolve()), "data": data,
            "preset": preset, "processes": dist.world_size()}


# settings that change no number of the result, so a resume may change them
_NO_EFFECT = {"halt_after_steps": None, "ckpt_every_steps": 0, "keep_last": 2, "num_workers": 0}


def _resume(out: Path, found: Path | None, resume: bool, record: dict, model, optimizer, device) -> Progress:
    """Load `found`, the latest checkpoint in `out`, when resuming; refuse a second start or a changed config."""
    if found is None:
        return Progress()
    if not resume:
        raise MimregError(f"fine-tuning folder {out} already holds checkpoints ({found.name}); pass --resume to "
                          "continue it, or --out NEW_FOLDER to start again")
    state = load_checkpoint(found, map_location=device)
    before, now = dict(state["config"]), dict(record)
    before["finetune"] = {**before["finetune"], **_NO_EFFECT}
    now["finetune"] = {**now["finetune"], **_NO_EFFECT}
    if before != now:
        changed = sorted(k for k in now["finetune"] if now["finetune"][k] != before["finetune"].get(k))
        raise ConfigError(f"--resume with settings that differ from the checkpoint's ({changed or 'data/checkpoint'}); "
                          "resume with the same settings, or start a new fine-tuning with --out")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    set_rng_state(state["rng"][min(dist.rank(), len(state["rng"]) - 1)])
    return Progress(**state["progress"])


def finetune(checkpoint, overrides: dict | None = None, *, data=None, data_root=None, device="auto", out=None,
             resume=False, echo=print) -> dict:
    """Fine-tune the encoder of `checkpoint` (a run folder or ckpt file) on `data` (default: the
    pretraining dataset); write RUN/evals/finetune_<data>_<head>[_<changed settings>].json."""
    began = time.time()
    dev, rank = _devices(device)
    echo = echo if dist.is_main_process() else (lambda *args: None)
    encoder, pre_cfg, meta = load_encoder(checkpoint)
    cfg, preset = resolve_config(encoder.arch, encoder.depth, overrides or {})
    name = data or pre_cfg.data.name
    root = data_root if data is not None or data_root is not None else pre_cfg.data.root
    options = {k: v for k, v in changed_settings(cfg, preset).items() if k != "head"}
    out = Path(out) if out else run_dir_of(checkpoint) / "finetune" / result_stem("finetune", None, name, cfg.head, options)
    torch.manual_seed(cfg.seed + rank)
    np.random.seed((cfg.seed + rank) % 2**32)
    train, test, train_plain, num_classes = _datasets(name, root, pre_cfg.img_size, cfg)
    model = build_classifier(encoder, num_classes, cfg.head, cfg.drop_path).to(dev)
    found = latest_checkpoint(out / "checkpoints")  # None also under --resume with nothing to resume yet
    probe = init_head_from_probe(model, train_plain, dev, cfg.seed) if cfg.head_init == "probe" and found is None else None
    freeze_all_but_last(model, cfg.blocks)
    optimizer = build_optimizer(model, cfg.weight_decay, cfg.layer_decay)
    record = _config_record(cfg, checkpoint, name, preset)
    progress = _resume(out, found, resume, record, model, optimizer, dev)
    world = dist.world_size()
    batches = EpochBatches(len(train), cfg.batch_size, world, rank, cfg.seed)
    if batches.steps < 1:
        raise ConfigError(f"{len(train)} training images give no step at batch {cfg.batch_size} x {world} processes; "
                          "lower --batch-size")
    trainer = _Trainer(cfg, model, optimizer, train, test, batches, num_classes, dev, out, record, echo)
    halted = trainer.run(progress)
    if halted:
        echo(f"halted at step {progress.step} (--halt-after-steps); continue with --resume --out {out}")
        return {"halted": True, "step": progress.step, "out": str(out)}
    evals = [c for c in progress.curves if "top1" in c]
    result = {"top1": evals[-1]["top1"], "top5": evals[-1]["top5"], "best_top1": max(c["top1"] for c in evals),
              "train_loss": progress.curves[-1]["train_loss"], "epochs": cfg.epochs, "steps": progress.step,
              "lr": trainer.base_lr, "processes": world, "num_classes": num_classes, "finetune_images": len(train),
              "config": record, "curves": progress.curves, "out": str(out),
              "minutes": (time.time() - began) / 60, **({"head_probe": probe} if probe else {})}  # of this call (a resumed run: since the resume)
    meta = {**meta, "checkpoint": str(checkpoint), "data": name, "train_images": len(train), "test_images": len(test)}
    path = save_result(run_dir_of(checkpoint), meta, protocol="finetune", variant=None, pool=cfg.head, options=options,
                       result=result) if dist.is_main_process() else None
    echo(f"fine-tuned: top-1 {result['top1']:.2f} top-5 {result['top5']:.2f} after {cfg.epochs} epochs"
         + (f"; wrote {path}" if path else ""))
    return {**result, "file": str(path) if path else None}


class _Trainer:
    """One epoch, one step, the test evaluation and the checkpoint of a fine-tuning."""

    def __init__(self, cfg, model, optimizer, train, test, batches, num_classes, device, out, record, echo):
        self.cfg, self.optimizer, self.train, self.test = cfg, optimizer, train, test
        self.batches, self.device, self.out, self.record, self.echo = batches, device, out, record, echo
        self.model = model
        self.net = model
        if dist.is_distributed():
            self.net = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None)
        self.criterion, self.mixup = _loss_and_mixup(cfg, num_classes)
        world = dist.world_size()
        self.base_lr = cfg.lr if cfg.lr is not None else cfg.blr * cfg.batch_size * world / 256
        self.total_steps = cfg.epochs * batches.steps
        self.warmup_steps = int(round(cfg.warmup_epochs * batches.steps))

    def run(self, progress: Progress) -> bool:
        """Train to the last epoch from `progress`; True when halted by halt_after_steps."""
        self.net.train()
        for epoch in range(progress.step // self.batches.steps, self.cfg.epochs):
            if self._epoch(epoch, progress):
                return True
            mean_loss = dist.all_reduce_mean(torch.tensor(progress.loss_sum / max(progress.loss_steps, 1))).item()
            point = {"epoch": epoch + 1, "step": progress.step, "train_loss": mean_loss,
                     "lr": self.optimizer.param_groups[0]["lr"] / self.optimizer.param_groups[0].get("lr_scale", 1.0)}
            if (epoch + 1) % self.cfg.eval_every == 0 or epoch + 1 == self.cfg.epochs:
                point.update(evaluate_classifier(self.net, self.test, self.device))
            progress.curves.append(point)
            progress.loss_sum, progress.loss_steps = 0.0, 0
            self.echo(f"finetune epoch {epoch + 1}/{self.cfg.epochs} step {progress.step}: "
                      + ", ".join(f"{k} {v:.4g}" for k, v in point.items() if k not in ("epoch", "step")))
            self._checkpoint(progress, epoch + 1)
        return False

    def _epoch(self, epoch: int, progress: Progress) -> bool:
        first = progress.step - epoch * self.batches.steps
        self.train.set_epoch(epoch)
        # the loader's worker seeds come from this generator, not the global RNG that drop path draws from
        generator = torch.Generator().manual_seed(self.cfg.seed * 100_003 + epoch)
        loader = DataLoader(self.train, batch_sampler=self.batches.for_epoch(epoch, first), collate_fn=collate_keep_size,
                            num_workers=self.cfg.num_workers, pin_memory=self.device.type == "cuda", generator=generator)
        for batch in loader:
            progress.loss_sum += self._step(batch, progress.step)
            progress.loss_steps += 1
            progress.step += 1
            if self.cfg.ckpt_every_steps and progress.step % self.cfg.ckpt_every_steps == 0:
                self._checkpoint(progress, epoch)
            if self.cfg.halt_after_steps is not None and progress.step >= self.cfg.halt_after_steps:
                return True
        return False

    def _step(self, batch, step: int) -> float:
        images, labels = batch.images.to(self.device, non_blocking=True), batch.labels.to(self.device, non_blocking=True)
        targets = labels
        if self.mixup is not None:
            images, targets = self.mixup(images, labels)
        lr = lr_at(step, base_lr=self.base_lr, min_lr=self.cfg.min_lr, warmup_steps=self.warmup_steps,
                   total_steps=self.total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        loss = self.criterion(self.net(images), targets)
        if not bool(dist.all_reduce_min(torch.isfinite(loss.detach()).float())):
            raise NonFiniteLossError(f"non-finite fine-tuning loss at step {step}; the last checkpoint in "
                                     f"{self.out} is kept. Lower --blr or set --clip-grad")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.clip_grad is not None:
            torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], self.cfg.clip_grad)
        self.optimizer.step()
        return float(loss.detach())

    def _checkpoint(self, progress: Progress, epoch: int) -> None:
        states = dist.gather_objects(rng_state())  # a collective: every process takes part
        if dist.is_main_process():
            payload = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "rng": states,
                       "step": progress.step, "epoch": epoch, "progress": dataclasses.asdict(progress),
                       "config": self.record}
            save_checkpoint(self.out / "checkpoints", progress.step, payload, self.cfg.keep_last)
