"""The one training loop, for every method and regularizer."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from mimreg import distributed as dist
from mimreg.config import Config, config_to_dict, dump_config
from mimreg.engine.build import build_trainee
from mimreg.engine.checkpoint import latest_checkpoint, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from mimreg.engine.data import build_pretrain_data
from mimreg.engine.metrics import MetricsWriter, RunningMeans, read_metrics
from mimreg.engine.schedule import (build_optimizer, learning_rate, lr_at, set_lr, set_weight_decay,
                                    weight_decay_at)
from mimreg.errors import ConfigError, MimregError, NonFiniteLossError
from mimreg.io import write_json_atomic


@dataclass
class RunResult:
    run_dir: Path
    checkpoint: Path | None
    steps: int
    halted: bool  # stopped by train.halt_after_steps before the last epoch
    last_metrics: dict


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device is {name!r} but no CUDA device is available; use train.device=cpu")
    return torch.device(name)


def step_seed(seed: int, rank: int, step: int, micro: int) -> int:
    """A seed for the mask noise of one micro-step: the masks depend only on (seed, rank, step)."""
    return int(np.random.SeedSequence([seed, rank, step, micro]).generate_state(1)[0])


def pretrain(cfg: Config, run_dir: str | Path, resume: bool = False) -> RunResult:
    """Pretrain from `cfg` into `run_dir`, or continue the run there with `resume`."""
    device = resolve_device(cfg.train.device)
    dist.init_from_env(device.type)
    if dist.is_distributed() and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    world, rank, main = dist.world_size(), dist.rank(), dist.is_main_process()
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    _prepare_run_dir(cfg, run_dir, ckpt_dir, resume, main)

    torch.manual_seed(cfg.train.seed + rank)
    np.random.seed((cfg.train.seed + rank) % 2**32)
    data = build_pretrain_data(cfg, world, rank)
    trainee = build_trainee(cfg, data.num_classes).to(device)
    if cfg.train.compile:
        for block in trainee.method.encoder.vit.blocks:
            block.compile()
    model = trainee
    if dist.is_distributed():
        if cfg.train.sync_batchnorm:
            trainee, note = dist.sync_batchnorm(trainee, device)
            if note and main:
                print(note, flush=True)
        model = torch.nn.parallel.DistributedDataParallel(
            trainee, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = build_optimizer(trainee, cfg.optim)
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.train.precision == "fp16" and device.type == "cuda")

    accum = cfg.optim.accum_steps
    steps_per_epoch = data.batches.steps // accum
    if steps_per_epoch < 1:
        raise ConfigError(f"one epoch of {data.num_images} images gives no optimizer step at "
                          f"batch {cfg.optim.batch_size} x accum {accum} x {world} processes")
    total_steps = cfg.train.epochs * steps_per_epoch
    warmup_steps = int(round(cfg.optim.warmup_epochs * steps_per_epoch))
    schedule_steps = int(round(total_steps * cfg.optim.schedule_stretch))
    base_lr = learning_rate(cfg.optim, world)

    step = 0
    interval, epoch_means = RunningMeans(), RunningMeans()
    if resume and (found := latest_checkpoint(ckpt_dir)) is not None:
        state = load_checkpoint(found, map_location=device)
        _load_model_state(trainee, state["model"], found)
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        step = state["step"]
        if "means" in state:  # absent from checkpoints of the first release
            interval.load_state_dict(state["means"]["interval"], device)
            epoch_means.load_state_dict(state["means"]["epoch"], device)
        if main:
            _truncate_metrics(run_dir / "metrics.jsonl", step)
            print(f"resuming {run_dir} from step {step} (epoch {step // steps_per_epoch})")

    if main and step == 0:
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)  # a restart before the first checkpoint
    writer = MetricsWriter(run_dir, main, cfg.train.tensorboard)
    if main and step == 0:
        writer.write({"kind": "start", "config": cfg.recipe, "images": data.num_images, "world": world,
                      "steps_per_epoch": steps_per_epoch, "total_steps": total_steps, "lr": base_lr})
    autocast = _autocast(cfg.train.precision, device)
    show_bar = cfg.train.progress and main and sys.stderr.isatty()
    last_path, halted = latest_checkpoint(ckpt_dir), False
    last_metrics = _previous_summary(run_dir).get("last_metrics", {}) if step else {}

    def checkpoint(epoch_done: int) -> Path | None:
        payload = {"model": trainee.state_dict(), "optimizer": optimizer.state_dict(),
                   "scaler": scaler.state_dict(), "scheduler": {"step": step, "total_steps": total_steps},
                   "rng": rng_state(), "step": step, "epoch": epoch_done, "config": config_to_dict(cfg),
                   "means": {"interval": interval.state_dict(), "epoch": epoch_means.state_dict()}}
        return save_checkpoint(ckpt_dir, step, payload, cfg.train.keep_last) if main else None

    trainee.train()
    try:
        for epoch in range(step // steps_per_epoch, cfg.train.epochs):
            first = step - epoch * steps_per_epoch
            loader = data.loader(epoch, first * accum, cfg.data.num_workers, device.type == "cuda")
            bar = tqdm(total=steps_per_epoch, initial=first, desc=f"epoch {epoch}", disable=not show_bar,
                       leave=False, dynamic_ncols=True)
            micro = 0
            for batch in loader:
                images = to_device(batch.images, device)
                labels = batch.labels.to(device, non_blocking=True)
                if batch.bad_files and main:
                    writer.write({"kind": "skipped_images", "step": step, "files": batch.bad_files})
                lr = lr_at(step, base_lr=base_lr, min_lr=cfg.optim.min_lr, warmup_steps=warmup_steps,
                           total_steps=schedule_steps)
                set_lr(optimizer, lr)
                if cfg.optim.weight_decay_end is not None:
                    set_weight_decay(optimizer, weight_decay_at(step, start=cfg.optim.weight_decay,
                                                                end=cfg.optim.weight_decay_end, total_steps=schedule_steps))
                monitor = step % cfg.train.monitor_every == 0 and micro == 0
                generator = torch.Generator(device=device).manual_seed(step_seed(cfg.train.seed, rank, step, micro))
                last_micro = micro == accum - 1
                sync = contextlib.nullcontext() if last_micro or model is trainee else model.no_sync()
                with sync:
                    with autocast:
                        result = model(images, labels, epoch=epoch, monitor=monitor, generator=generator)
                    _check_finite(result, step)
                    scaler.scale(result.total / accum).backward()
                for name in [k for k in result.terms if k.startswith("gate/")]:
                    writer.write({"kind": "gate", "step": step, "regularizer": name[5:],
                                  "rec_ema": float(result.terms.pop(name))})
                    if main:
                        print(f"step {step}: {name[5:]} switched on (reconstruction EMA below its gate)", flush=True)
                terms = {"loss": result.total.detach(), **result.terms}
                interval.add(terms)
                epoch_means.add(terms)
                micro += 1
                if not last_micro:
                    continue
                micro = 0
                if cfg.optim.clip_grad is not None:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(trainee.parameters(), cfg.optim.clip_grad)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                trainee.method.on_step_end(step / total_steps)  # e.g. EMA target updates
                bar.update(1)
                if step % cfg.train.log_every == 0 or step % steps_per_epoch == 0:
                    last_metrics = interval.read()
                    weights = {f"weight/{r.name}": r.weight_at(epoch) for r in trainee.regularizers}
                    writer.write({"kind": "train", "step": step, "epoch": epoch, "lr": lr, **weights, **last_metrics})
                    bar.set_postfix(loss=f"{last_metrics.get('loss', float('nan')):.4f}")
                if cfg.train.ckpt_every_steps and step % cfg.train.ckpt_every_steps == 0:
                    last_path = checkpoint(epoch) or last_path
                if cfg.train.halt_after_steps is not None and step >= cfg.train.halt_after_steps:
                    halted = True
                    break
            bar.close()
            if halted:
                break
            summary = epoch_means.read()
            writer.write({"kind": "epoch", "step": step, "epoch": epoch, **summary})
            if main and not show_bar:
                shown = ", ".join(f"{k} {v:.4f}" for k, v in summary.items() if not k.startswith("probe/acc"))
                print(f"epoch {epoch + 1}/{cfg.train.epochs} step {step}: {shown}", flush=True)
            last_path = checkpoint(epoch + 1) or last_path
    finally:
        writer.close()
    if main:
        write_json_atomic(run_dir / "summary.json", {"steps": step, "halted": halted, "checkpoint": str(last_path),
                                               "last_metrics": last_metrics})
    return RunResult(run_dir, last_path, step, halted, last_metrics)


# buffers added after the first release: a checkpoint without them starts them at their defaults
OPTIONAL_BUFFERS = ("rec_ema", "gate_open")


def _load_model_state(trainee: torch.nn.Module, state: dict, path: Path) -> None:
    missing, unexpected = trainee.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith(OPTIONAL_BUFFERS)]
    if missing or unexpected:
        raise MimregError(f"checkpoint {path} does not match the model built from the config: missing "
                          f"{missing[:5]}, unexpected {unexpected[:5]}; resume with the config it was made with")


def to_device(images, device: torch.device):
    if isinstance(images, list):
        return [view.to(device, non_blocking=True) for view in images]
    return images.to(device, non_blocking=True)


def _prepare_run_dir(cfg: Config, run_dir: Path, ckpt_dir: Path, resume: bool, main: bool) -> None:
    existing = latest_checkpoint(ckpt_dir)
    if existing is not None and not resume:
        raise MimregError(f"run folder {run_dir} already holds checkpoints ({existing.name}); pass --resume "
                          "to continue that run, or --out NEW_FOLDER to start a new one")
    saved = run_dir / "config.yaml"
    if resume and existing is not None and saved.is_file():
        import yaml

        from mimreg.config import config_from_dict

        before = config_to_dict(config_from_dict(yaml.safe_load(saved.read_text())))
        now = config_to_dict(cfg)
        for section in (before, now):
            section["train"].pop("halt_after_steps", None)
        changed = _changed_keys(before, now)
        if changed:
            raise ConfigError(f"--resume with a config that differs from the run's config.yaml in {changed}; "
                              "resume with the same config, or start a new run with --out")
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, saved)


def _previous_summary(run_dir: Path) -> dict:
    path = run_dir / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _changed_keys(a, b, prefix="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            out += _changed_keys(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop records written after the checkpoint we resume from (they will be written again)."""
    # gate and skipped-image records carry the step before its optimizer update: strictly earlier only
    kept = [r for r in read_metrics(path)
            if r.get("step", 0) < step or (r.get("step", 0) == step and r.get("kind") not in ("gate", "skipped_images"))]
    path.write_text("".join(json.dumps(r) + "\n" for r in kept))


def _autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("train.precision fp16 needs a CUDA device; use bf16 on CPU")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _check_finite(result, step: int) -> None:
    values = [result.total] + list(result.terms.values())
    finite = torch.isfinite(torch.stack([v.detach().float() for v in values])).all().float()
    if bool(dist.all_reduce_min(finite)):  # every process stops together, none waits in backward
        return
    bad = [name for name, v in result.terms.items() if not bool(torch.isfinite(v).all())] or ["total"]
    raise NonFiniteLossError(f"non-finite loss at step {step} in term(s) {bad}; the last good checkpoint "
                             "is kept. Try a lower lr (optim.blr), optim.clip_grad, or train.precision fp32")
