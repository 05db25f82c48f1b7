"""The one training loop, for every method and regularizer.

`pretrain` sets up (device, process group, run folder, resume) and hands over to a `Trainer`,
whose methods are the loop's parts: one epoch, one step, the epoch's end, a checkpoint.
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from mimreg import distributed as dist
from mimreg.config import Config, config_to_dict
from mimreg.devices import local_device, resolve_device
from mimreg.engine.build import build_trainee
from mimreg.engine.checkpoint import load_checkpoint, non_finite_entries, rng_state, save_checkpoint, set_rng_state
from mimreg.engine.compiled_step import step_model
from mimreg.engine.data import build_pretrain_data
from mimreg.engine.metrics import MetricsWriter, RunningMeans
from mimreg.engine.run_folder import RunFolder
from mimreg.engine.run_info import start_facts, start_line
from mimreg.engine.schedule import (build_optimizer, learning_rate, lr_at, lr_hint, set_lr, set_weight_decay,
                                    weight_decay_at)
from mimreg.engine.stopping import GracefulStop
from mimreg.engine.strategy import Strategy
from mimreg.errors import ConfigError, NonFiniteLossError, RunInterrupted
from mimreg.engine.knn_monitor import KnnMonitor


@dataclass
class RunResult:
    run_dir: Path
    checkpoint: Path | None
    steps: int
    halted: bool  # stopped by train.halt_after_steps before the last epoch
    last_metrics: dict


def step_seed(seed: int, rank: int, step: int, micro: int) -> int:
    """A seed for the mask noise of one micro-step: the masks depend only on (seed, rank, step)."""
    return int(np.random.SeedSequence([seed, rank, step, micro]).generate_state(1)[0])


def pretrain(cfg: Config, run_dir: str | Path, resume: bool = False) -> RunResult:
    """Pretrain from `cfg` into `run_dir`, or continue the run there with `resume`.

    Everything is built before the folder is touched, so a config that cannot run leaves no trace.
    SIGTERM / SIGINT stop the run after the current step with a checkpoint (RunInterrupted).
    """
    device = resolve_device(cfg.train.device, key="train.device")
    dist.init_from_env(device.type, cfg.train.dist_timeout_s)
    trainer = Trainer(cfg, local_device(device, dist.is_distributed()))
    folder = RunFolder(run_dir)
    found = folder.check_resumable(cfg, resume)
    main = dist.is_main_process()
    if main:
        folder.open()
    try:
        if main:
            if resume and found is None:
                print(f"--resume: no checkpoint in {folder.checkpoints}; starting from scratch", flush=True)
            folder.write_config(cfg, notes=[start_line(cfg, dist.world_size())])
        if found is not None:
            trainer.restore(found)
        if main:
            folder.truncate_metrics(trainer.step)
        with GracefulStop() as stop:
            return trainer.run(folder, stop)
    finally:
        folder.close()


class Trainer:
    """The model, optimizer, data and counters of one run, and the loop over them."""

    def __init__(self, cfg: Config, device: torch.device):
        self.cfg, self.device = cfg, device
        self.world, self.rank, self.main = dist.world_size(), dist.rank(), dist.is_main_process()
        torch.manual_seed(cfg.train.seed + self.rank)
        np.random.seed((cfg.train.seed + self.rank) % 2**32)
        self.data = build_pretrain_data(cfg, self.world, self.rank, device=device)
        self.trainee = build_trainee(cfg, self.data.num_classes).to(device)
        self.model = self._wrap_distributed()
        self.forward = step_model(self.model, cfg.train, device)  # the model, or it compiled (train.compile)
        # the monitor embeds on the main process alone: not possible with sharded weights
        self.knn = KnnMonitor.from_config(cfg, device) if self.main and not self.strategy.sharded else None
        self.optimizer = build_optimizer(self.trainee, cfg.optim)
        self.scaler = torch.amp.GradScaler("cuda", enabled=cfg.train.precision == "fp16" and device.type == "cuda")
        self.autocast = _autocast(cfg.train.precision, device)

        self.accum = cfg.optim.accum_steps
        self.steps_per_epoch = self.data.batches.steps // self.accum
        if self.steps_per_epoch < 1:
            raise ConfigError(f"one epoch of {self.data.num_images} images gives no optimizer step at batch "
                              f"{cfg.optim.batch_size} x accum {self.accum} x {self.world} processes")
        self.total_steps = cfg.train.epochs * self.steps_per_epoch
        self.warmup_steps = int(round(cfg.optim.warmup_epochs * self.steps_per_epoch))
        self.schedule_steps = int(round(self.total_steps * cfg.optim.schedule_stretch))
        self.base_lr = learning_rate(cfg.optim, self.world)
        self.step = 0
        self.interval, self.epoch_means = RunningMeans(), RunningMeans()
        self.last_metrics: dict = {}
        self.last_checkpoint: Path | None = None

    def _wrap_distributed(self) -> torch.nn.Module:
        self.strategy = Strategy(self.cfg.train, self.device)  # train.strategy: ddp or fsdp
        self.trainee, model = self.strategy.wrap(self.trainee)
        return model

    # ------------------------------------------------------------ state
    def restore(self, path: Path) -> None:
        state = load_checkpoint(path, map_location=self.device)
        self.strategy.load_model(self.trainee, state["model"], path, OPTIONAL_BUFFERS)
        self.strategy.load_optimizer(self.trainee, self.optimizer, state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        per_rank = state.get("rng_ranks")  # each process's own streams (drop path differs per process)
        set_rng_state(per_rank[self.rank] if per_rank and len(per_rank) == self.world else state["rng"])
        self.step = state["step"]
        if "means" in state:  # absent from checkpoints of the first release
            self.interval.load_state_dict(state["means"]["interval"], self.device)
            self.epoch_means.load_state_dict(state["means"]["epoch"], self.device)
        self.last_checkpoint = path
        if self.main:
            print(f"resuming from {path} at step {self.step} (epoch {self.step // self.steps_per_epoch})", flush=True)

    def save_checkpoint(self, folder: RunFolder) -> Path | None:
        """Write ckpt_<step>.pt (main process), never with non-finite weights or optimizer state."""
        payload = {"model": self.strategy.model_state(self.trainee),
                   "optimizer": self.strategy.optimizer_state(self.trainee, self.optimizer),
                   "scaler": self.scaler.state_dict(),
                   "scheduler": {"step": self.step, "total_steps": self.total_steps},
                   "rng": rng_state(), "rng_ranks": dist.gather_objects(rng_state()),
                   "step": self.step, "epoch": self.step // self.steps_per_epoch,
                   "config": config_to_dict(self.cfg),
                   "means": {"interval": self.interval.state_dict(), "epoch": self.epoch_means.state_dict()}}
        # under FSDP the main process alone holds the gathered state: its verdict is everyone's
        bad = dist.broadcast_from_main(non_finite_entries({"model": payload["model"],
                                                           "optimizer": payload["optimizer"]["state"]}))
        if bad:
            raise NonFiniteLossError(
                f"after step {self.step} {len(bad)} tensors of the model or optimizer are NaN or inf (e.g. "
                f"{', '.join(bad[:3])}); no checkpoint written, the last good one ({self.last_checkpoint}) "
                f"is kept. {lr_advice(self.cfg)}")
        if self.main:
            self.last_checkpoint = save_checkpoint(folder.checkpoints, self.step, payload, self.cfg.train.keep_last)
        return self.last_checkpoint

    # ------------------------------------------------------------ the loop
    def run(self, folder: RunFolder, stop: GracefulStop) -> RunResult:
        cfg = self.cfg
        writer = MetricsWriter(folder.path, self.main, cfg.train.tensorboard)
        previous = folder.read_summary() if self.step else {}
        self.last_metrics = previous.get("last_metrics", {})
        halted = False
        try:
            if self.step == 0:
                self.announce(writer)
            self.trainee.train()
            for epoch in range(self.step // self.steps_per_epoch, cfg.train.epochs):
                reason = self.train_epoch(epoch, folder, writer, stop)
                if reason == "halt":
                    halted = True
                    break
                if reason is not None:
                    self.write_summary(folder, halted=False, stopped_by=reason)
                    raise RunInterrupted(reason, self.step, self.last_checkpoint)
        finally:
            writer.close()
        self.write_summary(folder, halted=halted)
        return RunResult(folder.path, self.last_checkpoint, self.step, halted, self.last_metrics)

    def announce(self, writer: MetricsWriter) -> None:
        """The `start` record and the run's first printed line: what will run, at which lr."""
        writer.write({"kind": "start", "config": self.cfg.recipe, "images": self.data.num_images, "world": self.world,
                      "steps_per_epoch": self.steps_per_epoch, "total_steps": self.total_steps,
                      "device": str(self.device), "pipeline": self.data.pipeline, **start_facts(self.cfg, self.world)})
        if self.main:
            print(f"{self.cfg.recipe}: {self.data.num_images} images ({self.data.pipeline} pipeline), {self.cfg.train.epochs} epochs x "
                  f"{self.steps_per_epoch} steps on {self.device} x {self.world}; {start_line(self.cfg, self.world)}",
                  flush=True)

    def train_epoch(self, epoch: int, folder: RunFolder, writer: MetricsWriter, stop: GracefulStop) -> str | None:
        """One epoch from the current step; returns why it stopped early ("halt", a signal name) or None."""
        cfg, spe = self.cfg, self.steps_per_epoch
        first = self.step - epoch * spe
        loader = self.data.loader(epoch, first * self.accum, cfg.data.num_workers, self.device.type == "cuda")
        show = cfg.train.progress and self.main and sys.stderr.isatty()
        bar = tqdm(total=spe, initial=first, desc=f"epoch {epoch + 1}/{cfg.train.epochs}", disable=not show,
                   leave=False, dynamic_ncols=True)
        shown_at, micro, stop_agreed = 0.0, 0, False
        try:
            for batch in loader:
                if batch.bad_files and self.main:
                    writer.write({"kind": "skipped_images", "step": self.step, "files": batch.bad_files})
                lr = self.set_schedule()
                terms, stop_agreed = self.forward_backward(batch, epoch, micro, stop, writer)
                micro += 1
                if micro < self.accum:
                    continue
                micro = 0
                self.optimizer_step()
                bar.update(1)
                if show and time.monotonic() - shown_at > 0.5:  # a sync at most twice a second
                    bar.set_postfix(loss=f"{float(terms['loss']):.4f}")
                    shown_at = time.monotonic()
                self.log_step(epoch, lr, writer)
                if self.step % spe == 0:
                    self.end_epoch(epoch, writer)
                reason = self.stop_reason(stop_agreed, stop)
                every = cfg.train.ckpt_every_steps
                if reason is not None or self.step % spe == 0 or (every and self.step % every == 0):
                    self.save_checkpoint(folder)
                    reason = reason or self.stop_reason(False, stop)  # a signal during the write
                if reason is not None:
                    return reason
        finally:
            bar.close()
        return None

    def set_schedule(self) -> float:
        o = self.cfg.optim
        lr = lr_at(self.step, base_lr=self.base_lr, min_lr=o.min_lr, warmup_steps=self.warmup_steps,
                   total_steps=self.schedule_steps)
        set_lr(self.optimizer, lr)
        if o.weight_decay_end is not None:
            set_weight_decay(self.optimizer, weight_decay_at(self.step, start=o.weight_decay, end=o.weight_decay_end,
                                                             total_steps=self.schedule_steps))
        return lr

    def forward_backward(self, batch, epoch: int, micro: int, stop: GracefulStop,
                         writer: MetricsWriter) -> tuple[dict, bool]:
        """One micro-step: forward, finiteness (and stop request) agreed by all processes, backward."""
        images = to_device(batch.images, self.device)
        labels = batch.labels.to(self.device, non_blocking=True)
        monitor = self.step % self.cfg.train.monitor_every == 0 and micro == 0
        seed = step_seed(self.cfg.train.seed, self.rank, self.step, micro)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        last_micro = micro == self.accum - 1
        sync = contextlib.nullcontext() if last_micro or self.model is self.trainee else self.model.no_sync()
        with sync:
            with self.autocast:
                result = self.forward(images, labels, epoch=epoch, monitor=monitor, generator=generator)
            stop_agreed = _check_finite_and_stop(result, self.step, stop, self.cfg)
            self.scaler.scale(result.total / self.accum).backward()
        for name in [k for k in result.terms if k.startswith("gate/")]:
            writer.write({"kind": "gate", "step": self.step, "regularizer": name[5:],
                          "rec_ema": float(result.terms.pop(name))})
            if self.main:
                print(f"step {self.step}: {name[5:]} switched on (reconstruction EMA below its gate)", flush=True)
        terms = {"loss": result.objective, **result.terms}
        self.interval.add(terms)
        self.epoch_means.add(terms)
        return terms, stop_agreed

    def optimizer_step(self) -> None:
        if self.cfg.optim.clip_grad is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.trainee.method.clipped_parameters(), self.cfg.optim.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.trainee.method.on_step_end(self.step / self.total_steps)  # e.g. EMA target updates

    def log_step(self, epoch: int, lr: float, writer: MetricsWriter) -> None:
        if self.step % self.cfg.train.log_every == 0 or self.step % self.steps_per_epoch == 0:
            self.last_metrics = self.interval.read()
            weights = {f"weight/{r.name}": r.weight_at(epoch) for r in self.trainee.regularizers}
            writer.write({"kind": "train", "step": self.step, "epoch": epoch, "lr": lr, **weights, **self.last_metrics})

    def end_epoch(self, epoch: int, writer: MetricsWriter) -> None:
        """The epoch's record and its one printed line; written before the epoch's checkpoint, so a
        run resumed from that checkpoint neither repeats nor loses it."""
        summary = self.epoch_means.read()
        writer.write({"kind": "epoch", "step": self.step, "epoch": epoch, **summary})
        if self.knn is not None and self.knn.due(epoch + 1):
            method = self.trainee.method
            knn = self.knn.measure(getattr(method, method.eval_encoder))
            writer.write({"kind": "knn", "step": self.step, "epoch": epoch, **knn})
            summary.update(knn)
        if self.main:
            tqdm.write(f"epoch {epoch + 1}/{self.cfg.train.epochs} step {self.step}: {format_terms(summary)}")
            sys.stdout.flush()

    def stop_reason(self, stop_agreed: bool, stop: GracefulStop) -> str | None:
        halt = self.cfg.train.halt_after_steps
        # one process stops as soon as it is asked; several stop at the step they agreed on
        if stop_agreed or (stop.requested and not dist.is_distributed()):
            return stop.signal_name or "SIGTERM"  # another process received it
        if halt is not None and self.step >= halt and self.step < self.total_steps:
            return "halt"
        return None

    def write_summary(self, folder: RunFolder, halted: bool, stopped_by: str | None = None) -> None:
        if self.main:
            folder.write_summary({"steps": self.step, "halted": halted, "stopped_by": stopped_by,
                                  "checkpoint": str(self.last_checkpoint) if self.last_checkpoint else None,
                                  "last_metrics": self.last_metrics})


def format_terms(terms: dict[str, float]) -> str:
    """`loss 0.5123, rec 0.5100, ... | probe/ce 2.01, probe/acc 31.2`: the objective's terms first."""
    side_keys = ("probe/", "aux/", "knn/")
    own = [f"{k} {v:.4f}" for k, v in terms.items() if not k.startswith(side_keys)]
    side = [f"{k} {v:.4g}" for k, v in terms.items() if k.startswith(side_keys)]
    return ", ".join(own) + (" | " + ", ".join(side) if side else "")


def lr_advice(cfg: Config) -> str:
    return f"Try {lr_hint(cfg.optim)}, optim.clip_grad, or train.precision fp32"


# buffers added after the first release: a checkpoint without them starts them at their defaults
OPTIONAL_BUFFERS = ("rec_ema", "gate_open", "probe_norm.running_mean", "probe_norm.running_var",
                    "probe_norm.num_batches_tracked")


def to_device(images, device: torch.device):
    if isinstance(images, list):
        return [view.to(device, non_blocking=True) for view in images]
    return images.to(device, non_blocking=True)


def _autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("train.precision fp16 needs a CUDA device; use bf16 on CPU")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _check_finite_and_stop(result, step: int, stop: GracefulStop, cfg: Config) -> bool:
    """Raise NonFiniteLossError naming every non-finite term; return whether any process was asked
    to stop. One collective for both, so every process stops together and none waits in backward."""
    values = [result.total, result.objective] + list(result.terms.values())
    finite = torch.isfinite(torch.stack([v.detach().float().reshape(()) for v in values])).all().float()
    flags = torch.stack([finite, torch.tensor(0.0 if stop.requested else 1.0, device=finite.device)])
    finite_everywhere, none_stopping = dist.all_reduce_min(flags).tolist()
    if finite_everywhere:
        return not none_stopping
    bad = [name for name, v in result.terms.items() if not bool(torch.isfinite(v).all())]
    if not bad and bool(finite):
        bad = ["(on another process)"]
    elif not bad:
        shown = ", ".join(f"{k}={float(v):.3g}" for k, v in result.terms.items())
        bad = [f"the sum of finite terms overflowed ({shown})"]
    raise NonFiniteLossError(f"non-finite loss at step {step} in term(s) {bad}; the last good checkpoint "
                             f"is kept. {lr_advice(cfg)}")
